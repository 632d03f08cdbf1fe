"""The fake API of tests.client with the pipelines API of issue 14 on top, and a client whose /events yields
pipeline events too: what the console is built against until the client package has them (see tui/pipeline_api).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import respx
from httpx_sse import ServerSentEvent

from client.api import Client
from client.models import ServerEvent
from runner.models import Job, JobSpec, JobState, PipelineRecord, PipelineState
from tests.client.fake_api import NOW, T0, FakeApi, error, make_job, sse

RETRIED = frozenset({"failure", "timeout", "error", "cancelled", "skipped"})  # what `failed_only` queues again
_ONE = re.compile(r"/pipelines/(\d+)(/cancel|/retry)?")


def depths(jobs: Sequence[Job]) -> dict[int, int]:
    """Each job's dependency depth, as the server works it out: 0 without needs, else 1 + its deepest need's."""
    needs = {job.name: set(job.needs) for job in jobs}
    found: dict[str | None, int] = {}

    def of(name: str | None) -> int:
        if name not in found:
            found[name] = 1 + max((of(n) for n in needs.get(name, ()) if n in needs), default=-1)
        return found[name]

    return {job.id: of(job.name) for job in jobs}


class PipelineFakeApi(FakeApi):
    """FakeApi plus pipelines: `GET /pipelines`, `GET /pipelines/{id}`, `POST /pipelines/{id}/cancel|retry`."""

    def __init__(self, router: respx.MockRouter) -> None:
        super().__init__(router)  # routes every request to self.handle, this class's
        self.records: dict[int, PipelineRecord] = {}
        self.wait_reasons: dict[int, str] = {}  # queued job id -> why it waits
        self.pipelines_missing = False  # a server from before the pipelines API: 404

    # -- what the test does ---------------------------------------------------------------------------

    def add_pipeline(self, record: PipelineRecord, jobs: Sequence[Job] = (),
                     reasons: Mapping[int, str] | None = None) -> PipelineRecord:
        for job in jobs:
            self.add(replace(job, pipeline_id=record.id))
        record = replace(record, job_ids=tuple(job.id for job in jobs))
        self.records[record.id] = record
        self.pipelines[record.id] = record.to_dict()  # /pipelines/status, and submit's next pipeline id
        self.wait_reasons.update(reasons or {})
        return record

    def publish_pipeline(self, pipeline_id: int, state: str, **data: Any) -> None:
        event = {"pipeline_id": pipeline_id, "state": state, "kind": "pipeline", "data": data, "t": NOW}
        for feed in self.event_feeds:
            feed.send(sse(event, event="pipeline"))

    def set_pipeline_state(self, pipeline_id: int, state: str, **changes: Any) -> None:
        self.records[pipeline_id] = replace(self.records[pipeline_id], state=PipelineState(state), **changes)
        self.publish_pipeline(pipeline_id, state)

    def jobs_of(self, pipeline_id: int) -> list[Job]:
        return [self.jobs[i] for i in self.records[pipeline_id].job_ids]

    def pipeline_json(self, record: PipelineRecord, with_jobs: bool = False) -> dict[str, Any]:
        jobs = self.jobs_of(record.id)
        first = min((job.queued_at for job in jobs), default=None)
        end = record.finished_at if record.state.is_terminal else None
        out = record.to_dict() | {"jobs_total": len(jobs), "jobs_done": sum(job.state.is_terminal for job in jobs),
                                  "first_queued_at": first,
                                  "duration": None if end is None or first is None else max(0.0, end - first)}
        if with_jobs:
            depth = depths(jobs)
            out["jobs"] = [{"id": j.id, "name": j.name, "display": j.display or j.name, "needs": list(j.needs),
                            "state": j.state, "error": j.error, "started_at": j.started_at,
                            "finished_at": j.finished_at, "duration": j.duration, "attempts": j.attempts,
                            "waiting": j.waiting, "depth": depth[j.id],
                            "wait_reason": self.wait_reasons.get(j.id) if j.state is JobState.queued else None}
                           for j in jobs]
        return out

    # -- the server side ------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if not path.startswith("/pipelines") or path == "/pipelines/status" or self.down:
            return super().handle(request)
        self.requests.append(request)
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return error(401, "unauthorized", "send the API token as `Authorization: Bearer TOKEN`")
        if self.pipelines_missing:
            return error(404, "Not Found")
        if request.method == "GET" and path == "/pipelines":
            return self.list_pipelines(dict(request.url.params))
        match = _ONE.fullmatch(path)
        if match is None or int(match[1]) not in self.records:
            return error(404, "not found", "no such pipeline")
        record = self.records[int(match[1])]
        if request.method == "GET" and match[2] is None:
            return httpx.Response(200, json=self.pipeline_json(record, with_jobs=True))
        if request.method == "POST" and match[2] == "/cancel":
            return self.cancel_pipeline(record)
        if request.method == "POST" and match[2] == "/retry":
            body = json.loads(request.content) if request.content else {}
            return self.retry_pipeline(record, body.get("failed_only") is True)
        return error(405, "method not allowed")

    def list_pipelines(self, query: dict[str, str]) -> httpx.Response:
        records = sorted(self.records.values(), key=lambda r: -r.id)
        if "status" in query:
            records = [r for r in records if r.state == query["status"]]
        if "repo" in query:
            records = [r for r in records if r.repo == query["repo"]]
        limit = int(query.get("limit", "50"))
        return httpx.Response(200, json={"pipelines": [self.pipeline_json(r) for r in records[:limit]],
                                         "next_cursor": "more" if len(records) > limit else None})

    def cancel_pipeline(self, record: PipelineRecord) -> httpx.Response:
        if record.state.is_terminal:
            return error(409, "wrong state", f"pipeline {record.id} is {record.state}")
        running = False
        for job in self.jobs_of(record.id):
            if job.state is JobState.queued:
                self.set_state(job.id, "cancelled", finished_at=NOW)
            elif job.state is JobState.running:
                running = True
                self.jobs[job.id] = replace(job, cancel_requested=True)
                self.publish(job.id, "running", "cancel_requested")
        if running:  # it ends when its running jobs have stopped
            self.records[record.id] = replace(record, cancel_requested=True)
            return httpx.Response(200, json={"id": record.id, "state": "running", "cancel_requested": True})
        self.set_pipeline_state(record.id, "cancelled", finished_at=NOW, cancel_requested=True)
        return httpx.Response(200, json={"id": record.id, "state": "cancelled", "cancel_requested": True})

    def retry_pipeline(self, record: PipelineRecord, failed_only: bool) -> httpx.Response:
        if not record.state.is_terminal:
            return error(409, "wrong state", f"pipeline {record.id} is {record.state}")
        if failed_only:
            again = [job for job in self.jobs_of(record.id) if job.state in RETRIED]
            for job in again:
                self.jobs[job.id] = replace(job, state=JobState.queued, started_at=None, finished_at=None, error=None)
                self.publish(job.id, "queued", pipeline=record.id, retry="failed")
            self.set_pipeline_state(record.id, "queued", finished_at=None)
            ids = [job.id for job in again]
            return httpx.Response(201, json={"pipeline": record.id, "jobs": ids, "retry_of": record.id})
        new_id = max(self.pipelines) + 1
        first = self.next_id()
        jobs = [replace(make_job(first + k, repo=job.spec.repo, ref=job.spec.ref, sha=job.spec.sha, queued_at=NOW),
                        name=job.name, display=job.display, needs=job.needs, waiting=bool(job.needs))
                for k, job in enumerate(self.jobs_of(record.id))]
        self.add_pipeline(replace(record, id=new_id, state=PipelineState.queued, created_at=NOW, started_at=None,
                                  finished_at=None, cancel_requested=False, error=None), jobs)
        for job in jobs:
            self.publish(job.id, "queued", pipeline=new_id)
        return httpx.Response(201, json={"pipeline": new_id, "jobs": [j.id for j in jobs], "retry_of": record.id})


def pipeline_job(job_id: int, name: str, state: str, *, display: str | None = None, needs: tuple[str, ...] = (),
                 repo: str = "https://github.com/acme/app.git", ref: str = "refs/heads/main",
                 started: float | None = None, finished: float | None = None, error: str | None = None) -> Job:
    """A job of a pipeline, as the queue stores it; queued a second before it started."""
    queued = started - 1 if started is not None else NOW - 210
    job = make_job(job_id, repo=repo, ref=ref, state=state, queued_at=queued, started_at=started,
                   finished_at=finished, attempts=1 if started is not None else 0, error=error)
    return replace(job, name=name, display=display or name, needs=needs, waiting=state == "queued" and bool(needs))


def record(pipeline_id: int, state: str, *, repo: str = "https://github.com/acme/app.git",
           ref: str = "refs/heads/main", event: str = "push", created: float, started: float | None = None,
           finished: float | None = None, error: str | None = None) -> PipelineRecord:
    sha = "0123456789abcdef0123456789abcdef01234567"
    return PipelineRecord(id=pipeline_id, repo=repo, ref=ref, sha=sha, event=event,
                          spec=JobSpec(repo=repo, ref=ref, sha=sha, event=event), state=PipelineState(state),
                          error=error, created_at=created, started_at=started, finished_at=finished)


def seed_pipelines(api: PipelineFakeApi) -> None:
    """Five pipelines, newest first: planning; running with 8 jobs in 4 stages (a matrix in the second);
    cancelled; failed (a failed test skipped its build); one job that succeeded."""
    web, api_repo = "https://github.com/acme/web.git", "https://github.com/acme/api.git"
    api.add_pipeline(record(1, "success", repo=web, ref="refs/tags/v1.2.0", event="tag", created=T0 + 100,
                            started=T0 + 101, finished=T0 + 143),
                     [pipeline_job(11, "ci", "success", repo=web, ref="refs/tags/v1.2.0", started=T0 + 101,
                                   finished=T0 + 143)])
    login = "refs/heads/feature/login"
    api.add_pipeline(record(2, "failure", repo=api_repo, ref=login, created=T0 + 200, started=T0 + 201,
                            finished=T0 + 260),
                     [pipeline_job(12, "lint", "success", repo=api_repo, ref=login, started=T0 + 201, finished=T0 + 210),
                      pipeline_job(13, "test", "failure", needs=("lint",), repo=api_repo, ref=login, started=T0 + 210,
                                   finished=T0 + 255, error="step pytest failed with exit code 1"),
                      pipeline_job(14, "build", "skipped", needs=("test",), repo=api_repo, ref=login,
                                   error="skipped: its need test ended failure")])
    pr = "refs/pull/42/head"
    api.add_pipeline(record(3, "cancelled", ref=pr, event="pull_request", created=T0 + 300, started=T0 + 301,
                            finished=T0 + 320),
                     [pipeline_job(15, "ci", "cancelled", ref=pr, started=T0 + 301, finished=T0 + 320,
                                   error="cancelled by the operator")])
    matrix = {19: ("3.12", "sqlite", "running", NOW - 100), 20: ("3.12", "postgres", "running", NOW - 95),
              21: ("3.13", "sqlite", "queued", None)}
    api.add_pipeline(record(4, "running", created=NOW - 210, started=NOW - 200), [
        pipeline_job(16, "lint", "success", started=NOW - 200, finished=NOW - 188),
        pipeline_job(17, "docs", "success", needs=("lint",), started=NOW - 188, finished=NOW - 160),
        pipeline_job(18, "test", "success", display="test (python=3.11, db=sqlite)", needs=("lint",),
                     started=NOW - 188, finished=NOW - 120),
        *(pipeline_job(i, "test", state, display=f"test (python={py}, db={db})", needs=("lint",), started=started)
          for i, (py, db, state, started) in matrix.items()),
        pipeline_job(22, "build", "queued", needs=("test",)),
        pipeline_job(23, "deploy", "queued", needs=("build",)),
    ], reasons={21: "max_parallel: 2 of test's 2 running", 22: "waits for test", 23: "waits for build"})
    api.add_pipeline(record(5, "planning", ref="refs/heads/feature/x", created=NOW - 5))


# -- the client side: /events with pipeline events ---------------------------------------------------------


@dataclass(frozen=True)
class ClientPipelineEvent:
    """A pipeline event as a client may yield it: not the console's own class (it reads attributes)."""

    pipeline_id: int
    state: str
    kind: str = "pipeline"
    data: Mapping[str, Any] = field(default_factory=dict)
    t: float = 0.0


class PipelineEventsClient(Client):
    """The client with what the API's client is getting: `/events` yields `event: pipeline` events too."""

    @asynccontextmanager
    async def events(self) -> AsyncIterator[AsyncIterator[ServerEvent]]:  # type: ignore[override]
        async with self._sse("/events", {}) as stream:
            yield _events(stream)  # type: ignore[misc]


async def _events(stream: AsyncIterator[ServerSentEvent]) -> AsyncIterator[ServerEvent | ClientPipelineEvent]:
    async for item in stream:
        if item.event == "pipeline":
            d = json.loads(item.data)
            yield ClientPipelineEvent(d["pipeline_id"], d["state"], d.get("kind", "pipeline"), d.get("data") or {},
                                      d.get("t") or 0.0)
        elif item.event in ("job", "message") and item.data:
            yield ServerEvent.from_dict(json.loads(item.data))
