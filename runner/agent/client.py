"""The agent's HTTP client of the coordinator's /agent/v1/ API: JSON calls with its token, retried with backoff
while the coordinator is away (restarting, or behind a partition); a refused lease and a refused token are final.

With several server URLs (`forgeci agent --server A --server B`: coordinators of one queue, i.e. sharing a
PostgreSQL queue) a call that meets a connection fault, a timeout or a 5xx goes to the next URL at once, and the
client stays with the one that answered (sticky: every call, of every job, goes there while it works), so losing a
coordinator moves the agent to another within one call rather than after backing off on the dead one. Only a
round in which every URL failed backs off. Leases live in the shared queue, so a job claimed through one
coordinator reports (heartbeats, log lines, steps, result) to whichever answers.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from runner.agent.wire import API, MAX_WAIT, VERSION
from runner.errors import RunnerError

log = logging.getLogger(__name__)

BACKOFF_MIN = 0.5
BACKOFF_MAX = 10.0


class AgentError(RunnerError):
    """A call the coordinator answered with an error that a retry would not change."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class LeaseLost(AgentError):
    """409: the job is no longer this lease's (expired and requeued, or a newer attempt holds it)."""


class TokenRefused(AgentError):
    """401 or 403: a wrong or revoked token; the agent stops."""


class Unreachable(RunnerError):
    """The coordinator did not answer within the time the caller gave."""


class AgentClient:
    """One session to the coordinators; `call` moves on to the next server on a connection fault or a 5xx, and
    backs off once every server failed."""

    def __init__(self, servers: str | Sequence[str], token: str, *, timeout: float = 20.0) -> None:
        listed = [servers] if isinstance(servers, str) else list(servers)
        self.servers = tuple(dict.fromkeys(s.rstrip("/") for s in listed))  # in order, each once
        if not self.servers:
            raise ValueError("an agent needs at least one server URL")
        self._current = 0  # the server calls go to: the last one that answered
        self._token = token
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def server(self) -> str:
        """The server calls go to now."""
        return self.servers[self._current]

    def __repr__(self) -> str:
        return f"AgentClient({', '.join(self.servers)!r})"  # never the token

    async def __aenter__(self) -> AgentClient:
        self._session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {self._token}",
                                                       "User-Agent": "forgeci-agent"})
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def once(self, path: str, body: Mapping[str, Any], *, timeout: float | None = None,
                   server: str | None = None) -> tuple[int, Any]:
        """One POST (to the current server unless one is named): (status, JSON body or None). Connection faults
        raise aiohttp.ClientError / TimeoutError."""
        assert self._session is not None, "use the client as an async context manager"
        url = f"{server or self.server}{API}{path}"
        limit = aiohttp.ClientTimeout(total=timeout or self._timeout)
        async with self._session.post(url, json=dict(body), timeout=limit) as response:
            data = await response.json(content_type=None) if response.status != 204 else None
            return response.status, data

    async def call(self, path: str, body: Mapping[str, Any], *, give_up_after: float | None = None,
                   timeout: float | None = None) -> tuple[int, Any]:
        """POST until a coordinator answers something other than a fault; errors that a retry cannot change
        raise (LeaseLost, TokenRefused, AgentError); Unreachable after `give_up_after` seconds (None: never).

        Each round tries every server once, from the current one; the deadline is checked between rounds only,
        so a stalled first server never keeps a heartbeat from reaching the second."""
        delay = BACKOFF_MIN
        loop = asyncio.get_running_loop()
        deadline = None if give_up_after is None else loop.time() + give_up_after
        while True:
            problems = []
            for _ in self.servers:
                server = self.server
                answer, problem = await self._attempt(server, path, body, timeout)
                if answer is not None:
                    return answer
                problems.append(f"{server}: {problem}")
                if len(self.servers) > 1 and self.server == server:  # not moved on already by another call
                    self._current = (self._current + 1) % len(self.servers)
                    log.warning("coordinator %s: %s; trying %s", server, problem, self.server)
            if deadline is not None and loop.time() + delay > deadline:
                raise Unreachable("; ".join(problems))
            log.info("%s; again in %.1fs", "; ".join(problems), delay)
            await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
            delay = min(delay * 2, BACKOFF_MAX)

    async def _attempt(self, server: str, path: str, body: Mapping[str, Any],
                       timeout: float | None) -> tuple[tuple[int, Any] | None, str]:
        """One call to one server: (its answer, "") or (None, the fault a retry elsewhere may get past)."""
        try:
            status, data = await self.once(path, body, timeout=timeout, server=server)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return None, f"{type(exc).__name__}: {exc}"
        if status < 400:
            return (status, data), ""
        detail = f"{status} {(data or {}).get('error')}: {(data or {}).get('detail')}" \
            if isinstance(data, dict) else str(status)
        if status == 409:
            raise LeaseLost(status, detail)
        if status in (401, 403):
            raise TokenRefused(status, detail)
        if status < 500 and status != 429:
            raise AgentError(status, detail)
        return None, detail

    async def claim(self, label: str, *, fresh: bool, running: list[str], wait: float = MAX_WAIT,
                    labels: Sequence[str] = (), max_concurrent: int = 1) -> Any:
        """A job under a lease (one whose runs_on `labels` has all of), or None after the long poll."""
        body = {"label": label, "wait": wait, "fresh": fresh, "running": running, "labels": list(labels),
                "version": VERSION, "max_concurrent": max_concurrent}
        status, data = await self.call("/claim", body, timeout=wait + 15)
        return data if status == 200 else None
