"""A respx fake of forgeci's HTTP API for the client's and the console's tests: jobs, live SSE streams, outages.

Bodies are built with the server's own value classes (runner.models.Job, bot.metrics.Metrics), so the client is
tested against the shapes the real API sends, and the fake's state changes publish the events the server would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any
from urllib.parse import unquote

import httpx
import respx

from bot.metrics import Metrics
from runner.models import BucketStats, Job, JobSpec, JobState, RangeStats, StepRecord, StepState
from tests.client.fake_pipelines import FakePipelines

BASE = "http://forgeci.test"
T0 = 1_800_000_000.0  # a fixed wall clock for the tests (the app's clock is pinned to NOW)
NOW = T0 + 600


class Feed(httpx.AsyncByteStream):
    """A response body the test writes to while the client reads it: an open SSE stream."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | Exception | None] = asyncio.Queue()
        self.closed = False

    def send(self, chunk: bytes | Exception | None) -> None:
        self.queue.put_nowait(chunk)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    async def aclose(self) -> None:
        self.closed = True


def sse(data: Any, *, id: int | None = None, event: str | None = None) -> bytes:
    head = (f"id: {id}\n" if id is not None else "") + (f"event: {event}\n" if event else "")
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def make_job(job_id: int, *, repo: str = "https://github.com/acme/app.git", ref: str = "refs/heads/main",
             sha: str | None = "0123456789abcdef0123456789abcdef01234567", state: str = "queued", priority: int = 5,
             queued_at: float = T0, started_at: float | None = None, finished_at: float | None = None,
             steps: tuple[tuple[str, str, int | None, float | None, float | None], ...] = (),
             cache_hit: bool | None = None, attempts: int = 0, error: str | None = None) -> Job:
    """A Job as the queue stores it; steps are (name, state, exit code, started, finished)."""
    records = tuple(StepRecord(i, name, StepState(st), code, s, f, None if s is None or f is None else f - s)
                    for i, (name, st, code, s, f) in enumerate(steps))
    return Job(id=job_id, spec=JobSpec(repo=repo, ref=ref, sha=sha, priority=priority), state=JobState(state),
               attempts=attempts, queued_at=queued_at, started_at=started_at, finished_at=finished_at,
               error=error, cache_hit=cache_hit, steps=records)


def metrics_body(range_name: str, jobs: int) -> dict[str, Any]:
    buckets = tuple(BucketStats(T0 + i * 60, {"success": 1} if i % 3 else {}, 10.0 + i if i % 3 else None,
                                12.0 + i if i % 3 else None) for i in range(12))
    states = {s.value: 0 for s in JobState if s.is_terminal} | {"success": jobs - 1, "failure": 1}
    stats = RangeStats(since=T0, until=NOW, states=states, avg_duration=42.5, p95_duration=90.0, cache_hits=3,
                       cache_lookups=4, bucket_seconds=60.0, buckets=buckets)
    return Metrics(range_name, stats, queued=2, running=1).to_dict()


class FakeApi(FakePipelines):
    """The API of one server, held in memory; tests change it and watch what the console asks for."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.jobs: dict[int, Job] = {}
        self.logs: dict[int, list[dict[str, Any]]] = {}
        self.log_done: set[int] = set()
        self.event_feeds: list[Feed] = []
        self.log_feeds: dict[int, list[Feed]] = {}
        self.requests: list[httpx.Request] = []
        self.down = False
        self.token: str | None = None
        self.cache: list[dict[str, Any]] = []
        self.snapshots: dict[int, dict[str, Any]] = {}  # job id -> {key, size, created_at}
        self.caches: dict[int, list[dict[str, Any]]] = {}  # job id -> its cache entries, as /jobs/status lists them
        self.cache_stats_missing = False
        self.pipelines: dict[int, dict[str, Any]] = {}  # pipeline id -> its record (fake_pipelines.py)
        self.wait_reasons: dict[int, str] = {}  # queued job id -> why it waits, as the server would say
        self.pipelines_missing = False  # a server from before the pipelines API
        self.now = NOW
        self.declared: dict[str, dict[str, Any]] = {}  # repo -> the inputs its pipeline declares (GET /inputs)
        self.quotas: list[dict[str, Any]] | None = None  # GET /quotas answers these; None: 404 (no such route)
        router.route(host="forgeci.test").mock(side_effect=self.handle)

    # -- what the test does ---------------------------------------------------------------------------

    def add(self, job: Job) -> Job:
        self.jobs[job.id] = job
        return job

    def next_id(self) -> int:
        return max(self.jobs, default=0) + 1

    def publish(self, job_id: int, state: str, kind: str = "state", **data: Any) -> None:
        self.send_event({"job_id": job_id, "state": state, "kind": kind, "data": data, "t": NOW}, "job")

    def send_event(self, data: dict[str, Any], event: str) -> None:
        """One `/events` event to every open stream."""
        for feed in self.event_feeds:
            feed.send(sse(data, event=event))

    def set_state(self, job_id: int, state: str, **changes: Any) -> None:
        """A state change on the server, published like the worker does."""
        self.jobs[job_id] = replace(self.jobs[job_id], state=JobState(state), **changes)
        self.publish(job_id, state)

    def log(self, job_id: int, *texts: str, stream: str = "stdout") -> None:
        lines = self.logs.setdefault(job_id, [])
        for text in texts:
            line = {"n": len(lines) + 1, "t": NOW, "step": "build", "stream": stream, "text": text}
            lines.append(line)
            for feed in self.log_feeds.get(job_id, []):
                feed.send(sse(line, id=line["n"]))

    def end_log(self, job_id: int) -> None:
        self.log_done.add(job_id)
        for feed in self.log_feeds.get(job_id, []):
            feed.send(sse({"id": job_id, "state": "success", "last": len(self.logs.get(job_id, []))}, event="end"))
            feed.send(None)

    def break_streams(self) -> None:
        """Every open stream breaks off, as when the server dies or the network drops."""
        for feed in self.event_feeds + [f for feeds in self.log_feeds.values() for f in feeds]:
            feed.send(httpx.ReadError("connection reset by peer"))
        self.event_feeds.clear()
        self.log_feeds.clear()

    def go_down(self) -> None:
        self.down = True
        self.break_streams()

    def calls(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path == path]

    def bodies(self, path: str) -> list[Any]:
        return [json.loads(r.content) for r in self.calls("POST", path)]

    # -- the server side ------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.down:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return error(401, "unauthorized", "send the API token as `Authorization: Bearer TOKEN`")
        path, method = request.url.path, request.method
        query = dict(request.url.params)
        body = json.loads(request.content) if request.content else {}
        if method == "GET" and path == "/jobs":
            return self.list_jobs(query)
        if method == "GET" and path == "/jobs/status":
            job = self.jobs.get(int(query.get("id", 0)))
            if job is None:
                return error(404, "not found", "no such job")
            return httpx.Response(200, json={**job.to_dict(), "snapshot": self.snapshots.get(job.id),
                                             "caches": self.caches.get(job.id, [])})
        if method == "GET" and path == "/events":
            feed = Feed()
            feed.send(b"retry: 2000\n\n")
            self.event_feeds.append(feed)
            return httpx.Response(200, headers={"Content-Type": "text/event-stream; charset=utf-8"}, stream=feed)
        if method == "GET" and path == "/jobs/logs":
            return self.follow_log(int(query["id"]), int(request.headers.get("Last-Event-ID", "0")))
        if method == "POST" and path == "/jobs/cancel":
            return self.cancel(body["id"])
        if method == "POST" and path == "/jobs/retry":
            return self.retry(body["id"], body.get("from_failed_step", False))
        if method == "POST" and path == "/jobs/priority":
            return self.priority(body["id"], body["priority"])
        if method == "POST" and path == "/jobs/submit":
            return self.submit(body)
        if method == "GET" and path == "/inputs":
            known = query.get("repo", "") in self.declared
            return httpx.Response(200, json={"known": known, "pipeline": 1 if known else None,
                                             "inputs": self.declared.get(query.get("repo", ""), {})})
        if path == "/pipelines" or path.startswith("/pipelines/"):
            return self.handle_pipelines(method, path, query, body)
        if method == "GET" and path == "/quotas" and self.quotas is not None:
            return httpx.Response(200, json={"quotas": self.quotas})
        if method == "GET" and path == "/metrics":
            return httpx.Response(200, json=metrics_body(query.get("range", "day"), len(self.jobs)))
        if method == "GET" and path == "/cache/stats" and not self.cache_stats_missing:
            return httpx.Response(200, json={"entries": self.cache, "total_size": sum(e["size"] for e in self.cache),
                                             "hit_rate": 0.75})
        if method == "DELETE" and path.startswith("/cache/"):
            key = unquote(request.url.raw_path.decode().split("/cache/", 1)[1])
            before = len(self.cache)
            self.cache = [e for e in self.cache if e["key"] != key]
            return httpx.Response(200, json={"deleted": key}) if len(self.cache) < before else error(404, "not found")
        return error(404, "Not Found")

    def list_jobs(self, query: dict[str, str]) -> httpx.Response:
        jobs = sorted(self.jobs.values(), key=lambda j: -j.id)
        if query.get("order") == "dispatch":
            jobs = sorted((j for j in jobs if j.state is JobState.queued), key=lambda j: (-j.spec.priority, j.id))
        if "status" in query:
            jobs = [j for j in jobs if j.state == query["status"]]
        if "repo" in query:
            jobs = [j for j in jobs if j.spec.repo == query["repo"]]
        limit = int(query.get("limit", "50"))
        # As the server does, the queue in dispatch order says why each job waits.
        extra = (lambda j: {"wait_reason": self.wait_reasons.get(j.id)}) if query.get("order") == "dispatch" else (
            lambda j: {})
        return httpx.Response(200, json={"jobs": [j.to_dict() | {"steps": []} | extra(j) for j in jobs[:limit]],
                                         "next_cursor": "more" if len(jobs) > limit else None})

    def follow_log(self, job_id: int, after: int) -> httpx.Response:
        if job_id not in self.jobs:
            return error(404, "not found", f"job {job_id}")
        feed = Feed()
        feed.send(b"retry: 2000\n\n")
        for line in self.logs.get(job_id, [])[after:]:
            feed.send(sse(line, id=line["n"]))
        if job_id in self.log_done:
            feed.send(sse({"id": job_id, "state": "success", "last": len(self.logs.get(job_id, []))}, event="end"))
            feed.send(None)
        else:
            self.log_feeds.setdefault(job_id, []).append(feed)
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, stream=feed)

    def cancel(self, job_id: int) -> httpx.Response:
        job = self.jobs[job_id]
        if job.state.is_terminal:
            return error(409, "wrong state", f"job {job_id} is {job.state}")
        if job.state is JobState.running:
            self.jobs[job_id] = replace(job, cancel_requested=True)
            self.publish(job_id, "running", "cancel_requested")
            return httpx.Response(200, json={"id": job_id, "state": "running", "cancel_requested": True})
        self.set_state(job_id, "cancelled", finished_at=NOW)
        return httpx.Response(200, json={"id": job_id, "state": "cancelled", "cancel_requested": True})

    def retry(self, job_id: int, from_failed: bool) -> httpx.Response:
        job = self.jobs[job_id]
        if not job.state.is_terminal:
            return error(409, "wrong state", f"job {job_id} is {job.state}")
        new = self.add(make_job(self.next_id(), repo=job.spec.repo, ref=job.spec.ref, sha=job.spec.sha,
                                queued_at=NOW))
        self.publish(new.id, "queued", retry_of=job_id)
        return httpx.Response(201, json={"id": new.id, "retry_of": job_id})

    def priority(self, job_id: int, value: Any) -> httpx.Response:
        if not isinstance(value, int) or not 0 <= value <= 10:
            return error(400, "invalid input", [f"request: priority: expected an integer 0..10, got {value!r}"])
        job = self.jobs[job_id]
        if job.state is not JobState.queued:
            return error(409, "wrong state", f"job {job_id} is {job.state}")
        self.jobs[job_id] = replace(job, spec=replace(job.spec, priority=value))
        self.publish(job_id, "queued", "priority", priority=value)
        return httpx.Response(200, json={"id": job_id, "priority": value})

    def submit(self, body: dict[str, Any]) -> httpx.Response:
        if "github.com/acme/" not in body["repo"] and not body["repo"].startswith("/"):
            return error(400, "invalid input", ["job spec: repo: not a repository this server may clone"])
        missing = [key for key, spec in self.declared.get(body["repo"], {}).items()
                   if spec.get("required") and key not in body.get("inputs", {})]
        if missing:
            return error(400, "invalid input", [f"inputs: inputs.{key}: required input missing" for key in missing])
        pipeline_id = len(self.pipelines) + 1
        if "unreachable" in body["repo"]:  # its fetch fails: the server goes on planning it in the background
            self.pipelines[pipeline_id] = {"id": pipeline_id, "state": "planning", "job_ids": [],
                                           "error": "cannot fetch the pipeline: connection refused"}
            return httpx.Response(202, json={"id": None, "pipeline": pipeline_id, "jobs": [], "planning": True})
        job = self.add(make_job(self.next_id(), repo=body["repo"], ref=body["ref"], sha=body.get("sha"),
                                priority=body.get("priority", 5), queued_at=NOW))
        self.pipelines[pipeline_id] = {"id": pipeline_id, "state": "queued", "job_ids": [job.id], "error": None}
        self.publish(job.id, "queued", priority=job.spec.priority, repo=job.spec.repo, ref=job.spec.ref)
        return httpx.Response(201, json={"id": job.id, "pipeline": pipeline_id, "jobs": [job.id]})


def error(status: int, error: str, detail: Any = None) -> httpx.Response:
    return httpx.Response(status, json={"error": error, "detail": detail})
