"""The pipeline endpoints of the respx fake API (tests/client/fake_api.py): list, one with its jobs, cancel, retry,
and the pipeline events they publish; the client's and the console's tests share them.

The answers are built with the server's own code (PipelineRecord.to_dict, bot.pipelines_api), so the client is
tested against the shapes the real API sends.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import httpx

from bot.pipelines_api import job_depths, pipeline_job_json
from runner.models import Job, JobSpec, JobState, PipelineRecord, PipelineState

PIPELINE_PATH = re.compile(r"^/pipelines/(?P<id>[^/]+)(?P<action>/cancel|/retry)?$")
RETRIED = frozenset({JobState.failure, JobState.timeout, JobState.error, JobState.cancelled,
                     JobState.skipped})  # what `failed_only` queues again, as runner.queue's retry_failed
TRIGGER = ("repo", "ref", "sha", "event")  # a pipeline's fields its spec carries too


def _error(status: int, error: str, detail: Any = None) -> httpx.Response:
    return httpx.Response(status, json={"error": error, "detail": detail})


class FakePipelines:
    """Pipelines held in memory beside the fake's jobs (`self.jobs`); a test adds them with add_pipeline."""

    jobs: dict[int, Job]
    pipelines: dict[int, dict[str, Any]]  # pipeline id -> its record's fields (PipelineRecord.to_dict)
    wait_reasons: dict[int, str]  # queued job id -> why it waits
    pipelines_missing: bool  # a server from before the pipelines API: 404
    now: float  # the fake's wall clock

    def publish(self, job_id: int, state: str, kind: str = "state", **data: Any) -> None: ...

    def send_event(self, data: dict[str, Any], event: str) -> None: ...

    def set_state(self, job_id: int, state: str, **changes: Any) -> None: ...

    # -- what the test does ---------------------------------------------------------------------------

    def add_pipeline(self, pipeline_id: int, jobs: list[Job], state: str = "running", **changes: Any) -> None:
        """A pipeline of `jobs` (added to the fake's jobs with their pipeline id); its trigger is its first job's
        unless `changes` say otherwise (repo, ref, sha, event, created_at, ...)."""
        for job in jobs:
            self.jobs[job.id] = replace(job, pipeline_id=pipeline_id)
        spec = jobs[0].spec if jobs else JobSpec(repo="https://github.com/acme/app.git", ref="refs/heads/main")
        spec = replace(spec, **{key: changes[key] for key in TRIGGER if key in changes})
        fields: dict[str, Any] = {
            "repo": spec.repo, "ref": spec.ref, "sha": spec.sha, "event": "push",
            "created_at": min((j.queued_at for j in jobs), default=0.0), "job_ids": tuple(j.id for j in jobs),
            "jobs_done": sum(j.state.is_terminal for j in jobs),
            "first_queued_at": min((j.queued_at for j in jobs), default=None)}
        record = PipelineRecord(id=pipeline_id, spec=spec, state=PipelineState(state), **(fields | changes))
        self.pipelines[pipeline_id] = record.to_dict()

    def publish_pipeline(self, pipeline_id: int, state: str, **data: Any) -> None:
        self.send_event({"pipeline_id": pipeline_id, "state": state, "kind": "pipeline", "data": data,
                         "t": self.now}, "pipeline")

    def set_pipeline_state(self, pipeline_id: int, state: str, **changes: Any) -> None:
        """A pipeline's state change on the server, published like job control does."""
        self.pipelines[pipeline_id] |= {"state": state, **changes}
        self.publish_pipeline(pipeline_id, state)

    def jobs_of(self, pipeline_id: int) -> list[Job]:
        return [self.jobs[i] for i in self.pipelines[pipeline_id].get("job_ids", []) if i in self.jobs]

    # -- the server side ------------------------------------------------------------------------------

    def pipeline_json(self, pipeline_id: int) -> dict[str, Any]:
        """The pipeline as listed, its progress worked out from its jobs as they are now."""
        record = self.pipelines[pipeline_id]
        jobs = self.jobs_of(pipeline_id)
        first = min((job.queued_at for job in jobs), default=None)
        end = record.get("finished_at") if PipelineState(record["state"]).is_terminal else None
        return {**record, "jobs_total": len(record.get("job_ids", [])),
                "jobs_done": sum(job.state.is_terminal for job in jobs), "first_queued_at": first,
                "duration": None if end is None or first is None else max(0.0, end - first)}

    def pipeline_body(self, pipeline_id: int) -> dict[str, Any]:
        jobs = self.jobs_of(pipeline_id)
        depths = job_depths(jobs)
        return {**self.pipeline_json(pipeline_id),
                "jobs": [pipeline_job_json(job, depths[job.id], self.wait_reasons.get(job.id)
                                           if job.state is JobState.queued else None) for job in jobs]}

    def handle_pipelines(self, method: str, path: str, query: dict[str, str], body: Any) -> httpx.Response:
        if self.pipelines_missing:
            return _error(404, "Not Found")
        if method == "GET" and path == "/pipelines":
            found = sorted(self.pipelines, reverse=True)
            for key in ("status", "repo"):
                if key in query:
                    found = [p for p in found if self.pipelines[p].get("state" if key == "status" else key)
                             == query[key]]
            limit = int(query.get("limit", "50"))
            return httpx.Response(200, json={"pipelines": [self.pipeline_json(p) for p in found[:limit]],
                                             "next_cursor": "more" if len(found) > limit else None})
        match = PIPELINE_PATH.match(path)
        if match is None or not match["id"].isdigit() or int(match["id"]) not in self.pipelines:
            return _error(404, "not found", "no such pipeline")
        pipeline_id, action = int(match["id"]), match["action"]
        if method == "GET" and action is None:
            return httpx.Response(200, json=self.pipeline_body(pipeline_id))
        if method == "POST" and action == "/cancel":
            return self.cancel_pipeline(pipeline_id)
        if method == "POST" and action == "/retry":
            return self.retry_pipeline(pipeline_id, bool(body.get("failed_only", False)))
        return _error(405, "method not allowed")

    def cancel_pipeline(self, pipeline_id: int) -> httpx.Response:
        record = self.pipelines[pipeline_id]
        if PipelineState(record["state"]).is_terminal:
            return _error(409, "wrong state", f"cannot cancel pipeline {pipeline_id}: it is {record['state']}")
        running = False
        for job in self.jobs_of(pipeline_id):
            if job.state is JobState.queued:
                self.set_state(job.id, "cancelled", finished_at=self.now)
            elif job.state is JobState.running:
                running = True
                self.jobs[job.id] = replace(job, cancel_requested=True)
                self.publish(job.id, "running", "cancel_requested")
        if running:  # it ends when its running jobs have stopped
            record["cancel_requested"] = True
        else:
            self.set_pipeline_state(pipeline_id, "cancelled", finished_at=self.now, cancel_requested=True)
        return httpx.Response(200, json={"id": pipeline_id, "state": record["state"], "cancel_requested": True})

    def retry_pipeline(self, pipeline_id: int, failed_only: bool) -> httpx.Response:
        record = self.pipelines[pipeline_id]
        if not PipelineState(record["state"]).is_terminal:
            return _error(409, "wrong state", f"pipeline {pipeline_id} is {record['state']}; only a finished one "
                                             f"can be retried")
        if failed_only:
            again = [job.id for job in self.jobs_of(pipeline_id) if job.state in RETRIED]
            if not again:
                return _error(409, "wrong state", f"pipeline {pipeline_id} has no failed job to retry")
            for job_id in again:
                self.jobs[job_id] = replace(self.jobs[job_id], state=JobState.queued, started_at=None,
                                            finished_at=None, error=None)
                self.publish(job_id, "queued", pipeline=pipeline_id, retry="failed")
            self.set_pipeline_state(pipeline_id, "queued", finished_at=None)
            return httpx.Response(201, json={"pipeline": pipeline_id, "jobs": again, "retry_of": pipeline_id})
        new_id = max(self.pipelines) + 1
        first = max(self.jobs) + 1
        jobs = [replace(job, id=first + i, state=JobState.queued, attempts=0, queued_at=self.now, started_at=None,
                        finished_at=None, error=None, cancel_requested=False, cache_hit=None, steps=(),
                        waiting=bool(job.needs))
                for i, job in enumerate(self.jobs_of(pipeline_id))]
        self.add_pipeline(new_id, jobs, "queued", **{key: record[key] for key in TRIGGER}, created_at=self.now)
        for job in jobs:
            self.publish(job.id, "queued", pipeline=new_id)
        return httpx.Response(201, json={"pipeline": new_id, "jobs": [j.id for j in jobs], "retry_of": pipeline_id})
