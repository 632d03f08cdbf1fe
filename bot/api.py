"""The JSON HTTP API: submit, inspect, steer and follow jobs; metrics, cache, maintenance, the OpenAPI document."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from bot import sse
from bot.auth import Access, Auth, Handler, guard
from bot.errors import HTTPError
from bot.keys import AUTH, CLOSING, ENVIRON, METRICS, RUNTIME, SETTINGS, STREAM_TIMING, StreamTiming
from bot.metrics import MetricsCache, parse_range
from bot.notify.setup import notification_metrics
from bot.openapi import openapi_document
from bot.parse import MAX_ID, boolean, job_id_of, query_limit, read_json
from bot.parse import bad as _bad
from bot.parse import check_keys as _check_keys
from bot.parse import integral as _integral
from bot.parse import query_id as _query_id
from bot.pipelines_api import PIPELINE_ROUTES, with_wait_reasons
from bot.inputs_api import INPUT_ROUTES
from bot.schedules_api import SCHEDULE_ROUTES
from config import inputs
from bot.usage import USAGE_ROUTES
from bot.agents_api import AGENTS_ROUTES
from config.pipeline import pipeline_from_dict
from runner.errors import JobNotFound
from runner.events import Event, PipelineEvent
from runner.logs import LogLine, read_log
from runner.maintenance import prune
from runner.models import MAX_PRIORITY, MIN_PRIORITY, Job, JobSpec, valid_priority
from runner.runtime import Runtime
from runner.services import declared_services, pending_service_log, service_log, service_log_names
from runner.usage_report import usage_prometheus

__all__ = ["ROUTES", "job_id_of", "read_json", "setup_api", "spec_from_body"]


# -- request parsing (bot.parse has what the pipeline views share) ------------------------------------


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
    _check_keys(body, ("repo", "ref"), ("sha", "steps", "env", "priority", "inputs", "user"))
    pipeline = None
    if body.get("steps") is not None:
        pipeline = {"steps": body["steps"]}
        pipeline_from_dict(pipeline, "request")  # reject a bad inline pipeline now, not after a clone
    priority = _integral(body.get("priority", default_priority))
    if not valid_priority(priority):
        raise _bad("priority", f"expected an integer {MIN_PRIORITY}..{MAX_PRIORITY}, got {priority!r}")
    env = {} if body.get("env") is None else _string_map(body["env"], "env")
    given = inputs.given_inputs(body.get("inputs"))  # checked against the pipeline's [inputs] at planning
    user = body.get("user")  # who asks (quotas' per_user_running, usage reports); one shared token: as good as that
    if user is not None and not (isinstance(user, str) and 0 < len(user) <= 100):
        raise _bad("user", f"expected a name of 1..100 characters, got {user!r}")
    meta: dict[str, Any] = {inputs.META: inputs.to_meta(given)} if given else {}
    if user:
        meta["user"] = user
    return JobSpec(repo=body["repo"], ref=body["ref"], sha=body.get("sha"), event="manual", priority=priority,
                   pipeline=pipeline, env=env, meta=meta)


# -- views --------------------------------------------------------------------------------------------


def _runtime(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


def job_json(job: Job) -> dict[str, Any]:
    return job.to_dict()


async def submit(request: web.Request) -> web.Response:
    """POST /jobs/submit {repo, ref, sha?, steps?, env?, priority?, inputs?} -> 201 {id, pipeline, jobs}: a
    pipeline, planned before the answer (`id` is its first job); 202 with no jobs when its fetch must be retried;
    400 naming the input when the pipeline's [inputs] refuse them."""
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
        [job] = with_wait_reasons(queue, [job_json(queue.get(job_id))])
        caches = [result.to_dict() for result in queue.cache_results(job_id)]
        return {**job, "caches": caches, "snapshot": snapshot.to_dict() if snapshot else None,
                "attempts_on": queue.attempt_runners(job_id)}

    return web.json_response(await asyncio.to_thread(read))


async def list_jobs(request: web.Request) -> web.Response:
    """GET /jobs?status=&repo=&order=&limit=&cursor= -> {jobs, next_cursor}; in dispatch order, each queued job
    says why it waits (`wait_reason`)."""
    query = request.query
    _check_keys(query, (), ("status", "repo", "order", "limit", "cursor"))
    limit = query_limit(request)
    queue = _runtime(request).queue

    def read() -> dict[str, Any]:
        jobs, cursor = queue.list_jobs(
            status=query.get("status"), repo=query.get("repo"),
            order=query.get("order", "newest"),  # type: ignore[arg-type]  # list_jobs validates it
            limit=limit, cursor=query.get("cursor"))
        found = [job_json(job) for job in jobs]
        return {"jobs": with_wait_reasons(queue, found) if query.get("order") == "dispatch" else found,
                "next_cursor": cursor}

    return web.json_response(await asyncio.to_thread(read))


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
    from_failed = boolean(body, "from_failed_step")
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
    if "service" in request.query:
        return await _service_logs(request, runtime, job_id, after, follow == "true")
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
            for line in await asyncio.to_thread(runtime.hub.read, job_id, path, after):
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
                for line in await asyncio.to_thread(runtime.hub.read, job_id, path, last):
                    last = line.n
                    send(line_event(line))
                send(sse.encode({"id": job_id, "state": state, "last": last}, event="end"))
                return

    timing = request.app[STREAM_TIMING]
    return await sse.stream(request, produce, keepalive=timing.keepalive, check=timing.check, stop=request.app[CLOSING])


SERVICE_POLL = 0.25  # seconds between two reads of a followed service log (no live feed publishes its lines)


async def _service_logs(request: web.Request, runtime: Runtime, job_id: int, after: int,
                        follow: bool) -> web.StreamResponse:
    """GET /jobs/logs?id=&service=NAME: the kept log of one of the job's services, as the same events as a job's
    log; followed by polling the file until the job is terminal, then the rest and `end`."""
    queue = runtime.queue
    name = request.query["service"]
    spec = (await asyncio.to_thread(queue.get, job_id)).spec  # 404 for the job first
    # A service the job declares and has not started yet reads as a log with no lines yet (followed, it waits).
    path = await asyncio.to_thread(service_log, runtime.layout, job_id, name) or \
        await asyncio.to_thread(pending_service_log, runtime.layout, spec, job_id, name)
    if path is None:
        names = await asyncio.to_thread(lambda: sorted({*service_log_names(runtime.layout, job_id),
                                                        *declared_services(spec)}))
        raise HTTPError(404, "service log not found",
                        {"id": job_id, "service": name[:100], "services": names})

    def state_now() -> Any:
        try:
            return queue.state_of(job_id)
        except JobNotFound:  # deleted by retention while followed
            return None

    async def produce(send: sse.Send) -> None:
        last = after
        while True:
            state = await asyncio.to_thread(state_now)
            done = not follow or state is None or state.is_terminal
            # Read after the state: a terminal job writes no more, so this read has everything.
            for line in await asyncio.to_thread(lambda after=last: list(read_log(path, after))):
                last = line.n
                send(line_event(line))
            if done:
                send(sse.encode({"id": job_id, "state": state, "last": last}, event="end"))
                return
            await asyncio.sleep(SERVICE_POLL)

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
    notify_text, notifications = await notification_metrics(request.app)
    if prometheus:
        usage = await asyncio.to_thread(usage_prometheus, runtime.queue)  # minutes, bytes, quotas: not by range
        return web.Response(body=(result.to_prometheus() + notify_text + usage).encode(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
    return web.json_response({**result.to_dict(), "notifications": notifications})


async def cache_stats(request: web.Request) -> web.Response:
    """GET /cache/stats?repo=&limit=: the cache entries (most recently used first), their sizes, the hit rate."""
    query = request.query
    _check_keys(query, (), ("repo", "limit"))
    limit_text = query.get("limit", "100")
    if not (limit_text.isascii() and limit_text.isdigit()) or len(limit_text) > 4 or not 1 <= int(limit_text) <= 1000:
        raise _bad("limit", f"expected an integer 1..1000, got {limit_text!r}")
    queue = _runtime(request).queue
    week = (await request.app[METRICS].get(queue, "week")).stats  # hits among the cache entries restores tried
    per_repo = request.app[SETTINGS].retention.cache_bytes_per_repo

    def read() -> dict[str, Any]:
        entries = queue.cache_entries(repo=query.get("repo"), limit=int(limit_text))
        totals = queue.cache_stats()
        return {"entries": [entry.to_dict() for entry in entries], "count": totals["entries"],
                "total_size": totals["bytes"], "hits": totals["hits"],
                "hit_rate": week.cache_hits / week.cache_lookups if week.cache_lookups else None,
                "hit_rate_range": "week", "repo_sizes": queue.repo_cache_bytes(), "repo_limit": per_repo}

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
    *PIPELINE_ROUTES,
    *SCHEDULE_ROUTES,
    *INPUT_ROUTES,
    *USAGE_ROUTES,
    *AGENTS_ROUTES,
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
