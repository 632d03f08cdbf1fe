"""Whether an agent's request may carry a job's secrets: https (direct, or a trusted proxy saying so) or loopback."""

from __future__ import annotations

import pytest

from bot.agent_transport import Transport, parse_proxies
from config.errors import ConfigError

PROXIES = parse_proxies(["10.0.0.5", "192.168.8.0/24", "127.0.0.1"])


@pytest.mark.parametrize(("transport", "secure"), [
    (Transport("127.0.0.1", False), False),  # 127.0.0.1 is a trusted proxy here, and it says nothing: plain http
    (Transport("127.0.0.2", False), True),  # loopback, not a proxy
    (Transport("::1", False), True),
    (Transport("::ffff:127.0.0.2", False), True),  # a v4-mapped loopback
    (Transport("203.0.113.9", False), False),  # plain http from elsewhere
    (Transport("203.0.113.9", True), True),  # TLS to us
    (Transport("203.0.113.9", False, "https"), False),  # not a trusted proxy: its header counts for nothing
    (Transport("10.0.0.5", False, "https"), True),  # a trusted proxy that says https
    (Transport("10.0.0.5", False, "HTTPS, http"), True),  # the first hop's protocol is the client's
    (Transport("10.0.0.5", False, "http"), False),
    (Transport("10.0.0.5", False, None), False),
    (Transport("192.168.8.77", False, "https"), True),  # inside a trusted network
    (Transport("127.0.0.1", False, "http"), False),  # a loopback proxy that says the client used plain http
    (Transport("127.0.0.1", False, "https"), True),
    (Transport(None, False), True),  # a Unix socket is this host
    (Transport("not-an-address", False), False),
])
def test_the_secrets_decision(transport: Transport, secure: bool) -> None:
    assert transport.secure(PROXIES) is secure


def test_without_trusted_proxies_loopback_and_tls_are_the_only_ways() -> None:
    assert Transport("127.0.0.1", False, "http").secure(()) is True
    assert Transport("10.0.0.5", False, "https").secure(()) is False
    assert "plain http from 10.0.0.5" in Transport("10.0.0.5", False).why_not()


def test_a_bad_trusted_proxy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'nope' is not an IP address"):
        parse_proxies(["nope"])
