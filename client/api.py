"""`Client`: forgeci's HTTP API over httpx — JSON calls parsed into client.models, and the two SSE streams."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from httpx_sse import ServerSentEvent, SSEError, aconnect_sse

from client.errors import TOKEN_ENV, APIError, AuthFailed, BadResponse, ClientError, ServerUnreachable
from client.models import (
    CacheStats, JobInfo, JobPage, LogEnd, LogEntry, Metrics, PipelineInfo, PipelinePage, PipelineServerEvent,
    ServerEvent, Submission,
)

TIMEOUT = 10.0
STREAM_READ_TIMEOUT = 45.0  # the server sends a keep-alive every 15 s: three missed ones mean a dead connection
RECONNECT_FOR = 60.0  # seconds a log follower keeps reconnecting without getting through before it gives up

T = TypeVar("T")


class Client:
    """The HTTP API of one server: `async with Client(url, token) as client: ...` (or call aclose())."""

    def __init__(self, server: str, token: str | None = None, *, timeout: float = TIMEOUT,
                 reconnect_for: float = RECONNECT_FOR, user_agent: str = "forgeci",
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.server = server.rstrip("/")
        self.reconnect_for = reconnect_for
        headers = {"User-Agent": user_agent}
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

    # -- plumbing -------------------------------------------------------------------------------------

    async def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                      body: Mapping[str, Any] | None = None) -> Any:
        """One call; its JSON answer (None for an empty one), or a ClientError."""
        try:
            response = await self._http.request(method, path, params=params, json=body)
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"cannot reach the forgeci server at {self.server}: {_reason(exc)}") from None
        except httpx.HTTPError as exc:  # a broken encoding, too many redirects, ...
            raise ClientError(f"{method} {path}: {_reason(exc)}") from None
        _raise_for(response, response.content)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise BadResponse(f"{method} {path}: the server did not answer with JSON", response.status_code) from None

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
            raise BadResponse(f"{path}: not an event stream ({exc})") from None
        except httpx.TransportError as exc:
            if connected:
                raise ServerUnreachable(f"lost the stream {path} of {self.server}: {_reason(exc)}") from None
            raise ServerUnreachable(f"cannot reach the forgeci server at {self.server}: {_reason(exc)}") from None
        except httpx.HTTPError as exc:
            raise ClientError(f"{path}: {_reason(exc)}") from None

    # -- jobs -----------------------------------------------------------------------------------------

    async def submit(self, repo: str, ref: str, *, sha: str | None = None, priority: int | None = None,
                     steps: list[dict[str, Any]] | None = None, env: Mapping[str, str] | None = None,
                     inputs: Mapping[str, str] | None = None) -> Submission:
        """Submit a pipeline; its id and jobs (none yet when the server is still planning it)."""
        body: dict[str, Any] = {"repo": repo, "ref": ref}
        for key, value in (("sha", sha), ("priority", priority), ("steps", steps), ("env", env),
                           ("inputs", None if inputs is None else dict(inputs))):
            if value is not None:
                body[key] = value
        return _parse(Submission.from_dict, await self.request("POST", "/jobs/submit", body=body))


    async def first_job(self, submission: Submission, *, poll: float = 0.5) -> int | None:
        """The submission's first job, waiting while its pipeline is planned; None if it ended without one (its
        repository could never be fetched, or it was cancelled)."""
        if submission.job is not None or submission.pipeline is None:
            return submission.job
        while True:
            found = await self.pipeline(submission.pipeline)
            if found.job_ids:
                return found.job_ids[0]
            if found.terminal:
                return None
            await asyncio.sleep(poll)

    async def list_jobs(self, *, status: str | None = None, repo: str | None = None, order: str = "newest",
                        limit: int = 100, cursor: str | None = None) -> JobPage:
        """One page of jobs, newest first, or queued jobs in dispatch order with order="dispatch"."""
        params = {"order": order, "limit": str(limit)}
        for key, value in (("status", status), ("repo", repo), ("cursor", cursor)):
            if value:
                params[key] = value
        return _parse(JobPage.from_dict, await self.request("GET", "/jobs", params=params))

    async def job(self, job_id: int) -> JobInfo:
        """The job with its steps."""
        return _parse(JobInfo.from_dict, await self.request("GET", "/jobs/status", params={"id": str(job_id)}))

    async def cancel(self, job_id: int) -> str:
        """Cancel a job; the state it is in now (a running job stays running until its runner stops it)."""
        answer = await self.request("POST", "/jobs/cancel", body={"id": job_id})
        return str(answer.get("state", "")) if isinstance(answer, dict) else ""

    async def retry(self, job_id: int, *, from_failed_step: bool = False) -> int:
        """Run a finished job again; the new job's id."""
        body = {"id": job_id, "from_failed_step": from_failed_step}
        return _id_of(await self.request("POST", "/jobs/retry", body=body))

    async def set_priority(self, job_id: int, priority: int) -> None:
        await self.request("POST", "/jobs/priority", body={"id": job_id, "priority": priority})

    # -- pipelines ------------------------------------------------------------------------------------

    async def pipelines(self, *, status: str | None = None, repo: str | None = None, limit: int = 50,
                        cursor: str | None = None) -> PipelinePage:
        """One page of pipelines, newest first (without their jobs' details: `job_ids`, `jobs_done`)."""
        params = {"limit": str(limit)}
        for key, value in (("status", status), ("repo", repo), ("cursor", cursor)):
            if value:
                params[key] = value
        return _parse(PipelinePage.from_dict, await self.request("GET", "/pipelines", params=params))

    async def pipeline(self, pipeline_id: int) -> PipelineInfo:
        """The pipeline with its jobs (none while planning): needs, states, durations, depth, why a job waits."""
        return _parse(PipelineInfo.from_dict, await self.request("GET", f"/pipelines/{int(pipeline_id)}"))

    async def cancel_pipeline(self, pipeline_id: int) -> str:
        """Cancel a pipeline; the state it is in now (running until its running jobs have stopped)."""
        answer = await self.request("POST", f"/pipelines/{int(pipeline_id)}/cancel")
        return str(answer.get("state", "")) if isinstance(answer, dict) else ""

    async def retry_pipeline(self, pipeline_id: int, *, failed_only: bool = False) -> Submission:
        """Run a finished pipeline again: a new pipeline at the same sha, or (`failed_only`) its failed jobs and
        the ones they skipped, in the same pipeline; the pipeline and the jobs queued."""
        answer = await self.request("POST", f"/pipelines/{int(pipeline_id)}/retry", body={"failed_only": failed_only})
        return _parse(Submission.from_dict, answer)

    # -- metrics and caches ---------------------------------------------------------------------------

    async def metrics(self, range_name: str = "day") -> Metrics:
        return _parse(Metrics.from_dict, await self.request("GET", "/metrics", params={"range": range_name}))

    async def cache_stats(self) -> CacheStats:
        return _parse(CacheStats.from_dict, await self.request("GET", "/cache/stats"))

    async def delete_cache(self, key: str) -> None:
        # Keys hold slashes ({repo}/{scope}/{hash}): encoded, they stay one path segment.
        await self.request("DELETE", f"/cache/{quote(key, safe='')}")

    # -- streams --------------------------------------------------------------------------------------

    @asynccontextmanager
    async def events(self, *, pipelines: bool = False,
                     ) -> AsyncIterator[AsyncIterator[ServerEvent | PipelineServerEvent]]:
        """`async with client.events() as events:` connected (or ClientError); then every job event (ServerEvent)
        as it happens, and with `pipelines` every pipeline state change too (PipelineServerEvent)."""
        async with self._sse("/events", {}) as stream:
            yield _events(stream, pipelines)

    @asynccontextmanager
    async def logs(self, job_id: int, after: int = 0, *, follow: bool = True,
                   service: str | None = None) -> AsyncIterator[AsyncIterator[LogEntry | LogEnd]]:
        """One connection to a job's log (or with `service`, to the kept log of that service of the job): the lines
        after line `after` (live with `follow`), then a LogEnd. An unknown service is an APIError 404 whose
        detail["services"] names the job's service logs.

        A stream that breaks off just stops, without its LogEnd (or raises ServerUnreachable); the caller decides
        whether to resume, as read_log does.
        """
        headers = {"Last-Event-ID": str(after)} if after else {}
        params = {"id": str(job_id)} if follow else {"id": str(job_id), "follow": "false"}
        if service is not None:
            params["service"] = service
        async with self._sse("/jobs/logs", params, headers) as stream:
            yield _log_items(stream)

    async def read_log(self, job_id: int, *, after: int = 0, follow: bool = True,
                       service: str | None = None) -> AsyncIterator[LogEntry | LogEnd]:
        """The job's log lines (or its service `service`'s) after `after`, then a LogEnd, across dropped connections.

        With `follow`, lines arrive live until the job ends; a dropped connection is resumed with Last-Event-ID
        from the last line received, so no line is lost or repeated. Without it, the lines written so far.
        A server never reached is an error at once; one that was reached is waited for `reconnect_for` seconds.
        """
        last = after
        connected = False
        failing_since: float | None = None
        delay = 0.2
        while True:
            try:
                async with self.logs(job_id, last, follow=follow, service=service) as items:
                    connected, failing_since, delay = True, None, 0.2
                    async for item in items:
                        if isinstance(item, LogEnd):
                            yield item
                            return
                        if item.n > last:
                            last = item.n
                            yield item
            except ClientError as exc:
                if not connected or not _transient(exc):
                    raise
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > self.reconnect_for:
                    raise  # the last failure says best what is wrong
            # The stream ended without its `end` event (a restart, a proxy timeout): resume where it stopped.
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def _events(stream: AsyncIterator[ServerSentEvent],
                  pipelines: bool) -> AsyncIterator[ServerEvent | PipelineServerEvent]:
    async for sse in stream:
        try:
            if sse.event in ("job", "message"):
                yield ServerEvent.from_dict(json.loads(sse.data))
            elif sse.event == "pipeline" and pipelines:
                yield PipelineServerEvent.from_dict(json.loads(sse.data))
        except (ValueError, BadResponse):
            continue  # one malformed event must not end a console's live view


async def _log_items(stream: AsyncIterator[ServerSentEvent]) -> AsyncIterator[LogEntry | LogEnd]:
    async for sse in stream:
        if not sse.data or sse.event not in ("end", "message", "line"):  # the stream's `retry:` hint, ...
            continue
        try:
            data = json.loads(sse.data)
            if sse.event == "end":
                state = data.get("state") if isinstance(data, dict) else None
                last = data.get("last") if isinstance(data, dict) else 0
                yield LogEnd(state if isinstance(state, str) else None, last if isinstance(last, int) else 0)
                return
            entry = LogEntry.from_dict(data)
        except (ValueError, BadResponse):
            # An event cut off by a broken connection: end this stream; a follower resumes after the last line.
            return
        yield entry


def _transient(exc: ClientError) -> bool:
    """Worth waiting out: the connection broke, or the server is restarting or overloaded (5xx)."""
    if isinstance(exc, AuthFailed):
        return False
    if isinstance(exc, APIError):
        return exc.status >= 500
    return True


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
    if status in (401, 403):
        raise AuthFailed(f"the server refused the API token ({status} {error}): set {TOKEN_ENV} to the server's token",
                         status, detail)
    message = f"{response.request.method} {response.request.url.path}: {status} {error}"
    if isinstance(detail, list):
        message += "".join(f"\n  {item}" for item in detail)
    elif detail:
        message += f" ({detail})"
    raise APIError(message, status, error, detail)


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _parse(parse: Callable[[Any], T], data: Any) -> T:
    try:
        return parse(data)
    except BadResponse as exc:
        raise BadResponse(f"unexpected answer from the server: {exc}") from None


def _id_of(answer: Any) -> int:
    if not isinstance(answer, dict) or not isinstance(answer.get("id"), int):
        raise BadResponse("unexpected answer from the server: no job id")
    return int(answer["id"])
