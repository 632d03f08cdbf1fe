"""Remote agents' tokens (only their sha256) and the leases agents hold (runner ids `agent:NAME:LABEL:LEASE`)."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from config.errors import ConfigError
from runner.queue.base import QueueBase

AGENT_PREFIX = "agent:"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def check_name(name: str, what: str = "agent name") -> str:
    """A token's (or an agent's) name: letters, digits, `.`, `_`, `-`, at most 64; ConfigError otherwise."""
    if not NAME.fullmatch(name):
        raise ConfigError(f"{what} {name!r}: use letters, digits, '.', '_' or '-' (at most 64, starting with a "
                          f"letter or digit)")
    return name


def lease_runner_id(token_name: str, label: str, lease: str) -> str:
    return f"{AGENT_PREFIX}{token_name}:{label}:{lease}"


def is_agent_runner(runner_id: str | None) -> bool:
    return bool(runner_id) and runner_id.startswith(AGENT_PREFIX)  # type: ignore[union-attr]


@dataclass(frozen=True)
class AgentToken:
    name: str
    created_at: float
    revoked_at: float | None

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "created_at": self.created_at, "revoked_at": self.revoked_at}


class AgentQueries(QueueBase):
    """The agent_tokens table, and the lease bookkeeping the coordinator does for its agents."""

    def create_agent_token(self, name: str) -> str:
        """A new token for agent `name`, returned once (only its hash is stored). ConfigError when `name` has
        a token that is not revoked; a revoked one is replaced."""
        check_name(name)
        token = "fca_" + secrets.token_urlsafe(32)
        with self._transaction() as conn:
            row = conn.execute("SELECT revoked_at FROM agent_tokens WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] is None:
                raise ConfigError(f"agent {name} already has a token: revoke it first "
                                  f"(forgeci agents token revoke {name})")
            conn.execute("INSERT OR REPLACE INTO agent_tokens (name, token_hash, created_at, revoked_at) "
                         "VALUES (?, ?, ?, NULL)", (name, token_hash(token), self._clock()))
        return token

    def revoke_agent_token(self, name: str) -> bool:
        """Revoke `name`'s token; False when it has none (or it is revoked already)."""
        with self._transaction() as conn:
            return conn.execute("UPDATE agent_tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                                (self._clock(), name)).rowcount == 1

    def agent_token(self, token: str) -> tuple[str, bool] | None:
        """(agent name, revoked) of the token, or None when no agent has it."""
        with self._transaction("BEGIN") as conn:
            row = conn.execute("SELECT name, revoked_at FROM agent_tokens WHERE token_hash = ?",
                               (token_hash(token),)).fetchone()
        return (row[0], row[1] is not None) if row else None

    def agent_tokens(self) -> list[AgentToken]:
        with self._transaction("BEGIN") as conn:
            rows = conn.execute("SELECT name, created_at, revoked_at FROM agent_tokens ORDER BY name").fetchall()
        return [AgentToken(*row) for row in rows]

    def extend_agent_leases(self, until: float) -> int:
        """Give every running job an agent holds a lease until at least `until` (the coordinator's start-up
        grace: agents that kept working through its restart may still report)."""
        with self._transaction() as conn:
            return conn.execute(
                "UPDATE jobs SET lease_expires = MAX(COALESCE(lease_expires, 0), ?) "
                "WHERE state = 'running' AND runner_id LIKE 'agent:%'", (until,)).rowcount

    def extend_leases(self, seconds: float) -> int:
        """Give every running job a lease of at least `seconds` from now (after an outage of the database, when no
        runner could renew its lease)."""
        with self._transaction() as conn:
            return conn.execute("UPDATE jobs SET lease_expires = MAX(COALESCE(lease_expires, 0), ?) "
                                "WHERE state = 'running'", (self._clock() + seconds,)).rowcount

    def agent_job_ids(self, prefix: str) -> list[tuple[int, str]]:
        """(job id, runner id) of the running jobs whose runner id starts with `prefix` (an agent's)."""
        with self._transaction("BEGIN") as conn:
            rows = conn.execute("SELECT id, runner_id FROM jobs WHERE state = 'running' AND runner_id IS NOT NULL",
                                ).fetchall()
        return [(job_id, runner) for job_id, runner in rows if runner.startswith(prefix)]
