"""An async httpx client of forgeci's HTTP API, for the console: JSON calls and the two SSE streams."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
from httpx_sse import SSEError, ServerSentEvent, aconnect_sse

from config.errors import ForgeciError
from tui.models import CacheStats, JobInfo, JobPage, LogEnd, LogEntry, Metrics, ResponseError, ServerEvent

TIMEOUT = 10.0
# The server sends an SSE keep-alive comment every 15 s; three missed ones mean the connection is dead.
STREAM_READ_TIMEOUT = 45.0


class ApiError(ForgeciError):
    """A call failed; `status` is the HTTP status (0 when there was no response) and `detail` the server's."""

    def __init__(self, message: str, status: int = 0, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail

    @property
    def details(self) -> list[str]:
        """The server's detail as a list of messages (a 400 lists one per problem)."""
        if isinstance(self.detail, list):
            return [str(item) for item in self.detail]
        return [str(self.detail)] if self.detail else []


class Unreachable(ApiError):
    """No answer: the server is down, the address is wrong, or the connection broke."""


class Unauthorized(ApiError):
    """The server refused the token (or wants one and none was given)."""


class ApiClient:
    """The HTTP API of one server. Use it as an async context manager, or call aclose()."""

    def __init__(self, server: str, token: str | None = None, *, timeout: float = TIMEOUT,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.server = server.rstrip("/")
        headers = {"User-Agent": "forgeci-tui"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(base_url=self.server, headers=headers, timeout=timeout, transport=transport)
        self._stream_timeout = httpx.Timeout(timeout, read=STREAM_READ_TIMEOUT)

    def __repr__(self) -> str:
        return f"ApiClient({self.server!r})"  # never the token

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- plumbing -------------------------------------------------------------------------------------

    async def _call(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                    body: Mapping[str, Any] | None = None) -> Any:
        try:
            response = await self._http.request(method, path, params=params, json=body)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach {self.server}: {_reason(exc)}") from None
        except httpx.HTTPError as exc:  # a broken encoding, too many redirects, ...
            raise ApiError(f"{method} {path}: {_reason(exc)}") from None
        _raise_for(response, response.content)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiError(f"{method} {path}: the server did not answer with JSON", response.status_code) from None

    @asynccontextmanager
    async def _sse(self, path: str, params: Mapping[str, str],
                   headers: Mapping[str, str] | None = None) -> AsyncIterator[AsyncIterator[ServerSentEvent]]:
        connected = False
        try:
            async with aconnect_sse(self._http, "GET", path, params=params, headers=dict(headers or {}),
                                    timeout=self._stream_timeout) as source:
                connected = True
                if source.response.status_code >= 400:
                    _raise_for(source.response, await source.response.aread())
                yield source.aiter_sse()
        except SSEError as exc:  # before TransportError, which it subclasses
            raise ApiError(f"{path}: not an event stream ({exc})") from None
        except httpx.TransportError as exc:
            what = f"lost the stream {path} of" if connected else "cannot reach"
            raise Unreachable(f"{what} {self.server}: {_reason(exc)}") from None
        except httpx.HTTPError as exc:
            raise ApiError(f"{path}: {_reason(exc)}") from None

    # -- jobs -----------------------------------------------------------------------------------------

    async def list_jobs(self, *, status: str | None = None, repo: str | None = None, order: str = "newest",
                        limit: int = 100, cursor: str | None = None) -> JobPage:
        """One page of jobs, newest first, or queued jobs in dispatch order with order="dispatch"."""
        params = {"order": order, "limit": str(limit)}
        for key, value in (("status", status), ("repo", repo), ("cursor", cursor)):
            if value:
                params[key] = value
        return _parse(JobPage.from_dict, await self._call("GET", "/jobs", params=params))

    async def job(self, job_id: int) -> JobInfo:
        """The job with its steps."""
        return _parse(JobInfo.from_dict, await self._call("GET", "/jobs/status", params={"id": str(job_id)}))

    async def submit(self, repo: str, ref: str, *, sha: str | None = None, priority: int | None = None) -> int:
        """Enqueue a job; its id."""
        body: dict[str, Any] = {"repo": repo, "ref": ref}
        if sha:
            body["sha"] = sha
        if priority is not None:
            body["priority"] = priority
        return _id_of(await self._call("POST", "/jobs/submit", body=body))

    async def cancel(self, job_id: int) -> str:
        """Cancel a job; the state it is in now (a running job stays running until its runner stops it)."""
        answer = await self._call("POST", "/jobs/cancel", body={"id": job_id})
        return str(answer.get("state", "")) if isinstance(answer, dict) else ""

    async def retry(self, job_id: int, *, from_failed_step: bool = False) -> int:
        """Run a finished job again; the new job's id."""
        return _id_of(await self._call("POST", "/jobs/retry", body={"id": job_id, "from_failed_step": from_failed_step}))

    async def set_priority(self, job_id: int, priority: int) -> None:
        await self._call("POST", "/jobs/priority", body={"id": job_id, "priority": priority})

    # -- panels ---------------------------------------------------------------------------------------

    async def metrics(self, range_name: str = "day") -> Metrics:
        return _parse(Metrics.from_dict, await self._call("GET", "/metrics", params={"range": range_name}))

    async def cache_stats(self) -> CacheStats:
        return _parse(CacheStats.from_dict, await self._call("GET", "/cache/stats"))

    async def delete_cache(self, key: str) -> None:
        # Keys hold slashes ({repo}/{scope}/{hash}): encoded, they stay one path segment.
        await self._call("DELETE", f"/cache/{quote(key, safe='')}")

    # -- streams --------------------------------------------------------------------------------------

    @asynccontextmanager
    async def events(self) -> AsyncIterator[AsyncIterator[ServerEvent]]:
        """`async with client.events() as events:` connected (or ApiError); then every job event as it happens."""
        async with self._sse("/events", {}) as stream:
            yield _events(stream)

    @asynccontextmanager
    async def logs(self, job_id: int, after: int = 0) -> AsyncIterator[AsyncIterator[LogEntry | LogEnd]]:
        """A job's log lines after line `after`, live; a LogEnd when the job is over and all lines are sent."""
        headers = {"Last-Event-ID": str(after)} if after else {}
        async with self._sse("/jobs/logs", {"id": str(job_id)}, headers) as stream:
            yield _log_lines(stream)


async def _events(stream: AsyncIterator[ServerSentEvent]) -> AsyncIterator[ServerEvent]:
    async for sse in stream:
        if sse.event not in ("job", "message"):
            continue
        try:
            yield ServerEvent.from_dict(json.loads(sse.data))
        except (ValueError, ResponseError):
            continue  # one malformed event must not end a console's live view


async def _log_lines(stream: AsyncIterator[ServerSentEvent]) -> AsyncIterator[LogEntry | LogEnd]:
    async for sse in stream:
        try:
            data = json.loads(sse.data)
            if sse.event == "end":
                state = data.get("state") if isinstance(data, dict) else None
                last = data.get("last") if isinstance(data, dict) else 0
                yield LogEnd(state if isinstance(state, str) else None, last if isinstance(last, int) else 0)
                return
            if sse.event in ("message", "line"):
                yield LogEntry.from_dict(data)
        except (ValueError, ResponseError):
            continue


def _raise_for(response: httpx.Response, content: bytes) -> None:
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
    where = f"{response.request.method} {response.request.url.path}"
    message = f"{where}: {status} {error}"
    if detail and not isinstance(detail, list):
        message += f" ({detail})"
    elif isinstance(detail, list):
        message += "".join(f"\n  {item}" for item in detail)
    if status in (401, 403):
        raise Unauthorized(f"the server refused the token: {status} {error}", status, detail)
    raise ApiError(message, status, detail)


def _reason(exc: httpx.HTTPError) -> str:
    return str(exc) or type(exc).__name__


def _parse(parse: Any, data: Any) -> Any:
    try:
        return parse(data)
    except ResponseError as exc:
        raise ApiError(f"unexpected answer from the server: {exc}") from None


def _id_of(answer: Any) -> int:
    if not isinstance(answer, dict) or not isinstance(answer.get("id"), int):
        raise ApiError("unexpected answer from the server: no job id")
    return int(answer["id"])
