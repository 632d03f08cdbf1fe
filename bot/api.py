"""The JSON HTTP API: submit, inspect, steer and follow jobs; metrics, cache, maintenance, the OpenAPI document."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from bot import sse
from bot.auth import Access, Auth, Handler, guard
from bot.errors import HTTPError
from bot.keys import AUTH, CLOSING, ENVIRON, METRICS, RUNTIME, SETTINGS, STREAM_TIMING, StreamTiming
from bot.metrics import MetricsCache, parse_range
from bot.openapi import openapi_document
from config.errors import ConfigError, ConfigIssue
from config.pipeline import pipeline_from_dict
from runner.errors import JobNotFound
from runner.events import Event, PipelineEvent
from runner.logs import LogLine, read_log
from runner.maintenance import prune
from runner.models import MAX_PRIORITY, MIN_PRIORITY, Job, JobSpec, valid_priority
from runner.runtime import Runtime

MAX_JSON_BODY = 1024 * 1024  # an API request is a few hundred bytes; webhooks have their own, larger limit
MAX_ID = 2**63 - 1  # SQLite's integer range: larger ids cannot exist, and must not reach the driver


# -- request parsing ----------------------------------------------------------------------------------


def _bad(key: str, message: str) -> ConfigError:
    return ConfigError(ConfigIssue("request", key, message))


async def read_json(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object body: 413 when too large, 415 when not JSON, 400 when not an object."""
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise HTTPError(413, "request body too large", f"at most {MAX_JSON_BODY} bytes")
    data = bytearray()
    async for chunk in request.content.iter_any():
        data += chunk
        if len(data) > MAX_JSON_BODY:
            raise HTTPError(413, "request body too large", f"at most {MAX_JSON_BODY} bytes")
    if not data and optional:
        return {}
    if request.content_type != "application/json":
        raise HTTPError(415, "unsupported media type", "send the body as application/json")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise _bad("", f"invalid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _bad("", f"expected a JSON object, got {type(body).__name__}")
    return body


def _check_keys(body: Mapping[str, Any], required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    issues = [ConfigIssue("request", key, "unknown key") for key in body if key not in required + optional]
    issues += [ConfigIssue("request", key, "missing") for key in required if key not in body]
    if issues:
        raise ConfigError(issues)


def _integral(value: object) -> object:
    """JSON has one number type: 3.0 is the integer 3 (as JSON Schema says), 3.5 and "3" are not integers."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_ID:
        return int(value)
    return value


def job_id_of(value: object, key: str = "id", what: str = "job") -> int:
    """A job (or pipeline) id from JSON: an integer (not a bool, not a string of digits) in SQLite's range."""
    value = _integral(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise _bad(key, f"expected a {what} id (a positive integer), got {value!r}")
    return value


def _query_id(request: web.Request, what: str = "job") -> int:
    if "id" not in request.query:
        raise _bad("id", "missing")
    text = request.query["id"]
    return job_id_of(int(text) if text.isascii() and text.isdigit() else text, what=what)


def _after(request: web.Request) -> int:
    value = sse.last_event_id(request)
    if value is None:
        return 0
    if not (value.isascii() and value.isdigit()) or int(value) > MAX_ID:
        raise _bad("Last-Event-ID", f"expected a line number, got {value!r}")
    return int(value)


def _string_map(value: object, key: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _bad(key, "expected an object of strings")
    return value


def spec_from_body(body: Mapping[str, Any], default_priority: int) -> JobSpec:
    """A JobSpec from a /jobs/submit body; every problem is a ConfigError (400)."""
    _check_keys(body, ("repo", "ref"), ("sha", "steps", "env", "priority"))
    pipeline = None
    if body.get("steps") is not None:
        pipeline = {"steps": body["steps"]}
        pipeline_from_dict(pipeline, "request")  # reject a bad inline pipeline now, not after a clone
    priority = _integral(body.get("priority", default_priority))
    if not valid_priority(priority):
        raise _bad("priority", f"expected an integer {MIN_PRIORITY}..{MAX_PRIORITY}, got {priority!r}")
    env = {} if body.get("env") is None else _string_map(body["env"], "env")
    return JobSpec(repo=body["repo"], ref=body["ref"], sha=body.get("sha"), event="api", priority=priority,
                   pipeline=pipeline, env=env)


# -- views --------------------------------------------------------------------------------------------


def _runtime(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


def job_json(job: Job) -> dict[str, Any]:
    return job.to_dict()


async def submit(request: web.Request) -> web.Response:
    """POST /jobs/submit {repo, ref, sha?, steps?, env?, priority?} -> 201 {id, pipeline, jobs}: a pipeline,
    planned before the answer (`id` is its first job); 202 with no jobs when its fetch must be retried."""
    spec = spec_from_body(await read_json(request), request.app[SETTINGS].queue.default_priority)
    submitted = await _runtime(request).control.submit_pipeline(spec)
    jobs = list(submitted.job_ids)
    body = {"id": jobs[0] if jobs else None, "pipeline": submitted.pipeline_id, "jobs": jobs}
    if not jobs:
        return web.json_response({**body, "planning": True}, status=202)
    return web.json_response(body, status=201, headers={"Location": f"/jobs/status?id={jobs[0]}"})


async def status(request: web.Request) -> web.Response:
    """GET /jobs/status?id= -> the job with its steps, durations, cache result and attempts."""
    queue = _runtime(request).queue
    job_id = _query_id(request)

    def read() -> dict[str, Any]:
        snapshot = queue.snapshot(job_id)
        return {**job_json(queue.get(job_id)), "snapshot": snapshot.to_dict() if snapshot else None}

    return web.json_response(await asyncio.to_thread(read))


async def pipeline_status(request: web.Request) -> web.Response:
    """GET /pipelines/status?id= -> the pipeline: its trigger, pinned sha, state and job ids (none while planning)."""
    record = await asyncio.to_thread(_runtime(request).queue.pipeline, _query_id(request, "pipeline"))
    return web.json_response(record.to_dict())


async def list_jobs(request: web.Request) -> web.Response:
    """GET /jobs?status=&repo=&order=&limit=&cursor= -> {jobs, next_cursor}."""
    query = request.query
    _check_keys(query, (), ("status", "repo", "order", "limit", "cursor"))
    limit_text = query.get("limit", "50")
    if not (limit_text.isascii() and limit_text.isdigit()) or len(limit_text) > 6:
        raise _bad("limit", f"expected an integer 1..1000, got {limit_text!r}")
    jobs, cursor = await asyncio.to_thread(
        _runtime(request).queue.list_jobs, status=query.get("status"), repo=query.get("repo"),
        order=query.get("order", "newest"),  # type: ignore[arg-type]  # list_jobs validates it
        limit=int(limit_text), cursor=query.get("cursor"),
    )
    return web.json_response({"jobs": [job_json(job) for job in jobs], "next_cursor": cursor})


async def cancel(request: web.Request) -> web.Response:
    """POST /jobs/cancel {id}: a queued job ends now; a running one is stopped by its runner."""
    body = await read_json(request)
    _check_keys(body, ("id",))
    job_id = job_id_of(body["id"])
    state = await _runtime(request).control.cancel(job_id)
    return web.json_response({"id": job_id, "state": state, "cancel_requested": True})


async def retry(request: web.Request) -> web.Response:
    """POST /jobs/retry {id, from_failed_step?} -> 201 {id, retry_of}: a new job like a finished one."""
    body = await read_json(request)
    _check_keys(body, ("id",), ("from_failed_step",))
    job_id = job_id_of(body["id"])
    from_failed = body.get("from_failed_step", False)
    if not isinstance(from_failed, bool):
        raise _bad("from_failed_step", f"expected true or false, got {from_failed!r}")
    new_id = await _runtime(request).control.retry(job_id, from_failed_step=from_failed)
    return web.json_response({"id": new_id, "retry_of": job_id}, status=201,
                             headers={"Location": f"/jobs/status?id={new_id}"})


async def priority(request: web.Request) -> web.Response:
    """POST /jobs/priority {id, priority}: move a queued job to another priority (FIFO within it)."""
    body = await read_json(request)
    _check_keys(body, ("id", "priority"))
    job_id = job_id_of(body["id"])
    value = _integral(body["priority"])
    if not valid_priority(value):
        raise _bad("priority", f"expected an integer {MIN_PRIORITY}..{MAX_PRIORITY}, got {value!r}")
    await _runtime(request).control.set_priority(job_id, value)
    return web.json_response({"id": job_id, "priority": value})


@functools.lru_cache(maxsize=8192)
def line_event(line: LogLine) -> bytes:
    """A log line as one SSE event; cached because every follower of a job sends the very same line."""
    data = {"n": line.n, "t": line.t, "step": line.step, "stream": line.stream, "text": line.text}
    return sse.encode(data, id=line.n)


async def logs(request: web.Request) -> web.StreamResponse:
    """GET /jobs/logs?id= (SSE): one event per line, id = line number; Last-Event-ID resumes after it."""
    runtime = _runtime(request)
    job_id = _query_id(request)
    after = _after(request)
    follow = request.query.get("follow", "true")
    if follow not in ("true", "false"):
        raise _bad("follow", f"expected true or false, got {follow!r}")
    queue = runtime.queue
    path = runtime.layout.log_file(job_id)

    def finished() -> bool:
        try:
            return queue.state_of(job_id).is_terminal
        except JobNotFound:  # deleted by retention while followed: nothing more will come
            return True

    await asyncio.to_thread(queue.state_of, job_id)  # 404 before the stream starts

    async def produce(send: sse.Send) -> None:
        last = after
        if follow == "false":  # the lines written so far, then the state the job is in now
            for line in await asyncio.to_thread(lambda: list(read_log(path, after))):
                last = line.n
                send(line_event(line))
            state = await asyncio.to_thread(queue.state_of, job_id)
            send(sse.encode({"id": job_id, "state": state, "last": last}, event="end"))
            return
        while True:
            # One follow per attempt: a retried job's log goes on in the same file after a requeue.
            async for line in runtime.hub.follow(job_id, path, last, done=finished):
                last = line.n
                send(line_event(line))
            try:
                state = await asyncio.to_thread(queue.state_of, job_id)
            except JobNotFound:
                state = None
            if state is None or state.is_terminal:
                # A later attempt may have written after this follow ended (its writer finished): the file has it.
                for line in await asyncio.to_thread(lambda after=last: list(read_log(path, after))):
                    last = line.n
                    send(line_event(line))
                send(sse.encode({"id": job_id, "state": state, "last": last}, event="end"))
                return

    timing = request.app[STREAM_TIMING]
    return await sse.stream(request, produce, keepalive=timing.keepalive, check=timing.check, stop=request.app[CLOSING])


def event_json(event: Event) -> dict[str, Any]:
    if isinstance(event, PipelineEvent):
        return {"pipeline_id": event.pipeline_id, "state": event.state, "kind": event.kind, "data": event.data,
                "t": event.t}
    return {"job_id": event.job_id, "state": event.state, "kind": event.kind, "data": event.data, "t": event.t}


async def events(request: web.Request) -> web.StreamResponse:
    """GET /events (SSE): every job state change and step progress (event `job`), and every pipeline state change
    (event `pipeline`), as it happens."""
    bus = _runtime(request).events

    async def produce(send: sse.Send) -> None:
        async for event in bus.subscribe():
            send(sse.encode(event_json(event), event="pipeline" if isinstance(event, PipelineEvent) else "job"))

    timing = request.app[STREAM_TIMING]
    return await sse.stream(request, produce, keepalive=timing.keepalive, check=timing.check, stop=request.app[CLOSING])


def wants_prometheus(request: web.Request) -> bool:
    fmt = request.query.get("format")
    if fmt is not None:
        if fmt not in ("json", "prometheus"):
            raise _bad("format", f"expected json or prometheus, got {fmt!r}")
        return fmt == "prometheus"
    accept = request.headers.get("Accept", "")
    return "text/plain" in accept and "application/json" not in accept


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics?range=hour|day|week[&format=prometheus]: totals, rates, durations, queue figures."""
    range_name = parse_range(request.query.get("range"))
    prometheus = wants_prometheus(request)
    runtime = _runtime(request)
    result = await request.app[METRICS].get(runtime.queue, range_name, runtime.hub.dropped_lines)
    if prometheus:
        return web.Response(body=result.to_prometheus().encode(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
    return web.json_response(result.to_dict())


async def cache_stats(request: web.Request) -> web.Response:
    """GET /cache/stats?repo=&limit=: the cache entries (most recently used first), their sizes, the hit rate."""
    query = request.query
    _check_keys(query, (), ("repo", "limit"))
    limit_text = query.get("limit", "100")
    if not (limit_text.isascii() and limit_text.isdigit()) or len(limit_text) > 4 or not 1 <= int(limit_text) <= 1000:
        raise _bad("limit", f"expected an integer 1..1000, got {limit_text!r}")
    queue = _runtime(request).queue
    week = (await request.app[METRICS].get(queue, "week")).stats  # hits among the jobs that tried a restore

    def read() -> dict[str, Any]:
        entries = queue.cache_entries(repo=query.get("repo"), limit=int(limit_text))
        totals = queue.cache_stats()
        return {"entries": [entry.to_dict() for entry in entries], "count": totals["entries"],
                "total_size": totals["bytes"], "hits": totals["hits"],
                "hit_rate": week.cache_hits / week.cache_lookups if week.cache_lookups else None,
                "hit_rate_range": "week"}

    return web.json_response(await asyncio.to_thread(read))


async def delete_cache(request: web.Request) -> web.Response:
    """DELETE /cache/{key}: forget an entry and delete its archive (404 when there is none)."""
    key = request.match_info["key"]
    entry = await asyncio.to_thread(_runtime(request).cache.delete, key)
    if entry is None:
        raise HTTPError(404, "not found", f"no cache entry {key!r}")
    return web.json_response({"deleted": entry.to_dict()})


async def maintenance(request: web.Request) -> web.Response:
    """POST /admin/maintenance: prune old snapshots, caches and jobs now; the report of what went."""
    _check_keys(await read_json(request, optional=True), ())  # no options yet: refuse any rather than ignore it
    report = await asyncio.to_thread(prune, _runtime(request))
    return web.json_response(report.to_dict())


async def openapi(request: web.Request) -> web.Response:
    """GET /openapi.json: the OpenAPI 3 document of this API."""
    return web.json_response(openapi_document(request.app[SETTINGS].server.public_url))


ROUTES: tuple[tuple[str, str, Handler, Access], ...] = (
    ("POST", "/jobs/submit", submit, "write"),
    ("GET", "/jobs/status", status, "read"),
    ("GET", "/jobs/logs", logs, "read"),
    ("POST", "/jobs/cancel", cancel, "write"),
    ("POST", "/jobs/retry", retry, "write"),
    ("POST", "/jobs/priority", priority, "write"),
    ("GET", "/jobs", list_jobs, "read"),
    ("GET", "/pipelines/status", pipeline_status, "read"),
    ("GET", "/events", events, "read"),
    ("GET", "/metrics", metrics, "read"),
    ("GET", "/cache/stats", cache_stats, "read"),
    ("DELETE", "/cache/{key:(?!stats$).+}", delete_cache, "write"),  # a key has slashes; never just "stats"
    ("POST", "/admin/maintenance", maintenance, "write"),
    ("GET", "/openapi.json", openapi, "public"),
)


def setup_api(app: web.Application, extra: tuple[tuple[str, str, Handler, Access], ...] = ()) -> None:
    """Register the API's routes and its access policy on the app (create_app calls it)."""
    if AUTH not in app:
        app[AUTH] = Auth.from_settings(app[SETTINGS], app[ENVIRON])
    if STREAM_TIMING not in app:
        app[STREAM_TIMING] = StreamTiming()
    if METRICS not in app:
        app[METRICS] = MetricsCache()

    app[CLOSING] = asyncio.Event()

    async def close_streams(app: web.Application) -> None:
        app[CLOSING].set()

    app.on_shutdown.append(close_streams)
    auth = app[AUTH]
    for method, path, handler, access in ROUTES + extra:
        app.router.add_route(method, path, guard(auth, access, handler))
