"""An async httpx client of the HTTP API (the CLI's client commands use it): JSON calls and resumable log streams."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse

from config.errors import ForgeciError
from runner.logs import LogLine

TIMEOUT = 10.0
STREAM_READ_TIMEOUT = 45.0  # the server sends a keep-alive every 15 s: three missed ones mean a dead connection
RECONNECT_FOR = 60.0  # seconds a follower keeps reconnecting without getting through before it gives up


class ClientError(ForgeciError):
    """A call to the server failed."""


class ServerUnreachable(ClientError):
    """No answer: the server is down, the address is wrong, or the connection broke for good."""


class AuthFailed(ClientError):
    """The server refused the token, or wants one and none was given."""


class APIError(ClientError):
    """The server answered with an error: `status`, its `error` and `detail`."""

    def __init__(self, message: str, status: int, error: str, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.detail = detail


@dataclass(frozen=True)
class LogEnd:
    """The end of a log stream: the job's final state (None if it vanished) and the last line number sent."""

    state: str | None
    last: int


class Client:
    """One server's API. `async with Client(url, token) as client: ...`."""

    def __init__(self, server: str, token: str | None = None, *, timeout: float = TIMEOUT,
                 reconnect_for: float = RECONNECT_FOR, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.server = server.rstrip("/")
        self.reconnect_for = reconnect_for
        headers = {"User-Agent": "forgeci-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(base_url=self.server, headers=headers, timeout=timeout, transport=transport)
        self._stream_timeout = httpx.Timeout(timeout, read=STREAM_READ_TIMEOUT)

    def __repr__(self) -> str:
        return f"Client({self.server!r})"  # never the token

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- calls ----------------------------------------------------------------------------------------

    async def _call(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                    body: Mapping[str, Any] | None = None) -> Any:
        try:
            response = await self._http.request(method, path, params=params, json=body)
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"cannot reach the forgeci server at {self.server}: {_reason(exc)}") from None
        _check(response, response.content)
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"{method} {path}: the server did not answer with JSON") from None

    async def submit(self, repo: str, ref: str, *, sha: str | None = None, priority: int | None = None,
                     steps: list[dict[str, Any]] | None = None, env: Mapping[str, str] | None = None) -> int:
        """Enqueue a job; returns its id."""
        body: dict[str, Any] = {"repo": repo, "ref": ref}
        for key, value in (("sha", sha), ("priority", priority), ("steps", steps), ("env", env)):
            if value is not None:
                body[key] = value
        return int((await self._call("POST", "/jobs/submit", body=body))["id"])

    async def jobs(self, *, status: str | None = None, repo: str | None = None, order: str = "newest",
                   limit: int = 50, cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """One page of jobs and the next page's cursor."""
        params = {"order": order, "limit": str(limit)}
        for key, value in (("status", status), ("repo", repo), ("cursor", cursor)):
            if value:
                params[key] = value
        answer = await self._call("GET", "/jobs", params=params)
        return answer["jobs"], answer["next_cursor"]

    async def status(self, job_id: int) -> dict[str, Any]:
        return await self._call("GET", "/jobs/status", params={"id": str(job_id)})

    async def cancel(self, job_id: int) -> dict[str, Any]:
        return await self._call("POST", "/jobs/cancel", body={"id": job_id})

    async def retry(self, job_id: int, *, from_failed_step: bool = False) -> int:
        answer = await self._call("POST", "/jobs/retry", body={"id": job_id, "from_failed_step": from_failed_step})
        return int(answer["id"])

    async def set_priority(self, job_id: int, priority: int) -> None:
        await self._call("POST", "/jobs/priority", body={"id": job_id, "priority": priority})

    async def metrics(self, range_name: str = "day") -> dict[str, Any]:
        return await self._call("GET", "/metrics", params={"range": range_name})

    # -- log streams ----------------------------------------------------------------------------------

    async def logs(self, job_id: int, *, after: int = 0, follow: bool = True) -> AsyncIterator[LogLine | LogEnd]:
        """The job's log lines after `after`, then a LogEnd.

        With `follow`, lines arrive live until the job ends; a dropped connection is resumed with Last-Event-ID
        from the last line received, so no line is lost or repeated. Without it, the lines written so far.
        """
        last = after
        connected = False  # a server never reached is an error at once; one that was reached is waited for
        failing_since: float | None = None
        delay = 0.2
        while True:
            headers = {"Last-Event-ID": str(last)} if last else {}
            params = {"id": str(job_id)} if follow else {"id": str(job_id), "follow": "false"}
            try:
                async with aconnect_sse(self._http, "GET", "/jobs/logs", params=params, headers=headers,
                                        timeout=self._stream_timeout) as source:
                    response = source.response
                    if response.status_code >= 400:
                        content = await response.aread()
                        if response.status_code < 500:
                            _check(response, content)
                        raise httpx.RemoteProtocolError(f"{response.status_code} from the server")
                    connected, failing_since, delay = True, None, 0.2
                    async for event in source.aiter_sse():
                        if not event.data:  # the stream's `retry:` hint
                            continue
                        try:
                            data = json.loads(event.data)
                            if event.event == "end":
                                end = LogEnd(data.get("state"), data.get("last", last))
                            else:
                                end = None
                                line = LogLine(data["n"], data["t"], data["step"], data["stream"], data["text"])
                        except (ValueError, KeyError, TypeError, AttributeError) as exc:
                            # An event cut off by a broken connection: resume after the last whole line.
                            raise _BrokenStream(f"incomplete event: {exc}") from None
                        if end is not None:
                            yield end
                            return
                        if line.n > last:
                            last = line.n
                            yield line
            except (httpx.TransportError, SSEError, _BrokenStream) as exc:
                if not connected:
                    message = f"cannot reach the forgeci server at {self.server}: {_reason(exc)}"
                    raise ServerUnreachable(message) from None
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > self.reconnect_for:
                    raise ServerUnreachable(f"lost the forgeci server at {self.server}: {_reason(exc)}") from None
            # The stream ended without its `end` event (a restart, a proxy timeout): resume where it stopped.
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


class _BrokenStream(Exception):
    """The stream broke mid-event."""


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _check(response: httpx.Response, content: bytes) -> None:
    status = response.status_code
    if status < 400:
        return
    error, detail = response.reason_phrase or "error", None
    try:
        body = json.loads(content)
        if isinstance(body, dict):
            error, detail = str(body.get("error") or error), body.get("detail")
    except ValueError:
        pass
    if status == 401:
        raise AuthFailed("the server refused the API token: set FORGECI_API_TOKEN to the server's token")
    message = f"{error}"
    if isinstance(detail, list):
        message += "".join(f"\n  {item}" for item in detail)
    elif detail:
        message += f": {detail}"
    raise APIError(message, status, error, detail)
