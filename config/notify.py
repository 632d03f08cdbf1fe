"""`[[notify]]` in forgeci.toml: where a finished pipeline is announced (Slack, Discord, a signed webhook, e-mail).

URLs, secrets and passwords never live in the file: each target names the environment variables that hold them.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from config.durations import to_duration_string
from config.schema import (
    DURATION,
    ENV_VAR,
    STRING,
    Issues,
    array_of_tables,
    choice,
    describe,
    integer,
    matching,
    nonempty_text,
    option,
    scalar,
    string_list,
)

KINDS: Final = ("slack", "discord", "webhook", "email")
EVENTS: Final = ("success", "failure", "fixed", "error", "cancelled", "always")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ADDRESS = re.compile(r"[^@\s<>]+@[^@\s<>]+")
_SMTP = re.compile(r"smtps?://[^/?#\s]+")


def _seconds(value: object) -> float:
    """A duration (`10s`, `5m`) or a number of seconds, fractions allowed (`0.5`)."""
    if isinstance(value, float) and not 0 < value < 10**9:
        raise ValueError(f"expected a positive number of seconds, got {describe(value)}")
    return float(value) if isinstance(value, float) else float(DURATION.convert(value, "", _Raise()))


class _Raise(Issues):
    def __init__(self) -> None:
        super().__init__("")

    def add(self, path: str, message: str) -> None:
        raise ValueError(message)


SECONDS: Final = scalar("duration or seconds", _seconds,
                        lambda s: to_duration_string(s) if s == int(s) else s)


@dataclass(frozen=True)
class NotifyTarget:
    """One [[notify]] entry: a channel, which pipeline ends it hears about, and how its delivery is retried."""

    kind: str = option(choice(*KINDS), "where the message goes")
    name: str = option(scalar("name", matching(_NAME, "a name like ops-slack", True)),
                       'the target\'s name in logs and /metrics; "" = `KIND-N` (its place among the [[notify]])', "")
    on: tuple[str, ...] = option(string_list(matching(re.compile("|".join(EVENTS)), "one of " + ", ".join(EVENTS)),
                                             "array of events", nonempty=True),
                                 "pipeline ends to announce: `success`, `failure`, `fixed` (the first success on a "
                                 "branch after a failure), `error`, `cancelled`, `always`", ("failure", "fixed"))
    repos: tuple[str, ...] = option(string_list(nonempty_text, "array of globs"),
                                    "repositories (`owner/name` globs) announced; empty = all", ())
    branches: tuple[str, ...] = option(string_list(nonempty_text, "array of globs"),
                                       "branches (globs) announced; empty = all", ())
    url_env: str = option(ENV_VAR, "slack, discord, webhook: env variable with the URL to post to", "")
    secret_env: str = option(ENV_VAR, "webhook: env variable with the HMAC-SHA256 key of `X-Forgeci-Signature`", "")
    from_addr: str = option(scalar("address", matching(_ADDRESS, "an e-mail address", True)),
                            "email: the sender address", "", key="from")
    to: tuple[str, ...] = option(string_list(matching(_ADDRESS, "an e-mail address"), "array of addresses"),
                                 "email: the recipients", ())
    smtp: str = option(scalar("URL", matching(_SMTP, "smtp://HOST[:PORT] or smtps://HOST[:PORT]", True)),
                       "email: the SMTP server, `smtp://HOST:PORT` (smtps:// = `tls`)", "")
    tls: str = option(choice("starttls", "tls", "none"),
                      "email: `starttls` (upgrade a plain connection), `tls` (TLS from the start) or `none`",
                      "starttls")
    user_env: str = option(ENV_VAR, "email: env variable with the SMTP user; unset = no login", "")
    password_env: str = option(ENV_VAR, "email: env variable with the SMTP password", "")
    ca_file: str = option(STRING, 'email: a PEM file of CAs to trust for the SMTP server; "" = the system\'s', "")
    retries: int = option(integer(0, 100), "deliveries retried this many times before the message is dropped", 8)
    backoff: float = option(SECONDS, "wait before the first retry; doubles each time (at most 1h)", 10.0)
    timeout: float = option(SECONDS, "how long one delivery may take", 15.0)
    log_lines: int = option(integer(0, 200), "last log lines of a failed step quoted in the message", 15)

    def label(self, index: int) -> str:
        """The target's name: `name`, or `KIND-N` for the index-th [[notify]] (0-based)."""
        return self.name or f"{self.kind}-{index + 1}"

    def wants(self, event: str, slug: str, branch: str) -> bool:
        """Whether this target announces a pipeline of repository `slug` on `branch` that ended with `event`
        (`success` also covers `fixed`: a fixed pipeline did succeed)."""
        heard = "always" in self.on or event in self.on or (event == "fixed" and "success" in self.on)
        return (heard and (not self.repos or any(fnmatch.fnmatchcase(slug, g) for g in self.repos))
                and (not self.branches or any(fnmatch.fnmatchcase(branch, g) for g in self.branches)))

    @property
    def smtp_host(self) -> tuple[str, int]:
        """(host, port) of `smtp`: the port defaults to 465 for `tls`, 587 for `starttls`, 25 for `none`."""
        parts = urlsplit(self.smtp)
        default = 465 if self.tls == "tls" or parts.scheme == "smtps" else 587 if self.tls == "starttls" else 25
        return parts.hostname or "", parts.port or default


def _check(target: NotifyTarget, where: str, issues: Issues) -> None:
    """What a kind needs beyond the keys' own checks."""
    if target.kind in ("slack", "discord", "webhook") and not target.url_env:
        issues.add(f"{where}.url_env", f"{target.kind}: missing required key (the env variable with its URL)")
    if target.kind == "webhook" and not target.secret_env:
        issues.add(f"{where}.secret_env", "webhook: missing required key (the env variable with the signing key)")
    if target.kind == "email":
        for key, value in (("from", target.from_addr), ("to", target.to), ("smtp", target.smtp)):
            if not value:
                issues.add(f"{where}.{key}", "email: missing required key")
        if target.smtp:
            try:
                _ = urlsplit(target.smtp).port  # ValueError for a port out of range
            except ValueError:
                issues.add(f"{where}.smtp", f"expected a port 1..65535, got {describe(target.smtp)}")


NOTIFY: Final = array_of_tables(NotifyTarget, check=_check, name=lambda target, i: target.label(i))
NOTIFY_DOC: Final = ("[[notify]]: announce finished pipelines on Slack, Discord, a signed webhook or by e-mail "
                     "(README, Notifications and badges)")


def named_targets(targets: tuple[NotifyTarget, ...]) -> Mapping[str, NotifyTarget]:
    """Name -> target, in file order."""
    return {target.label(i): target for i, target in enumerate(targets)}


