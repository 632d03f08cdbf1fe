"""Whether an agent's request came over a channel that may carry secrets: https (directly, or through a trusted
proxy that says so in X-Forwarded-Proto) or loopback. Anything else gets jobs without their secrets."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from config.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_proxies(entries: Iterable[str]) -> tuple[Network, ...]:
    """`server.trusted_proxies` as networks (an address is a /32 or /128); ConfigError names a bad entry."""
    out = []
    for entry in entries:
        try:
            out.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"server.trusted_proxies: {entry!r} is not an IP address or network") from None
    return tuple(out)


def _address(peer: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not peer:
        return None
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class Transport:
    """What the server knows of one request's way in."""

    peer: str | None  # the TCP peer's address (None for a Unix socket)
    tls: bool  # the connection itself is TLS
    forwarded_proto: str | None = None  # X-Forwarded-Proto, as sent

    def secure(self, proxies: Sequence[Network]) -> bool:
        """True when secrets may travel: TLS to us; or a trusted proxy says the client used https (a trusted
        proxy saying http wins over its own loopback address); or a loopback peer. A Unix socket is local."""
        if self.tls:
            return True
        address = _address(self.peer)
        if address is None:
            return self.peer is None  # a Unix socket (no address); an unparsable peer is not trusted
        if any(address in network for network in proxies):
            first = (self.forwarded_proto or "").split(",")[0].strip().lower()
            return first == "https"
        return address.is_loopback

    def why_not(self) -> str:
        return (f"the agent's connection is plain http from {self.peer or 'an unknown address'}; secrets travel "
                f"only over https or loopback (or through a proxy in server.trusted_proxies that sets "
                f"X-Forwarded-Proto: https)")
