"""The pipeline endpoints of the respx fake API (tests/client/fake_api.py): list, one with its jobs, cancel, retry.

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


def _error(status: int, error: str, detail: Any = None) -> httpx.Response:
    return httpx.Response(status, json={"error": error, "detail": detail})


class FakePipelines:
    """Pipelines held in memory beside the fake's jobs (`self.jobs`); a test adds them with add_pipeline."""

    jobs: dict[int, Job]
    pipelines: dict[int, dict[str, Any]]  # pipeline id -> its record's fields (PipelineRecord.to_dict)
    wait_reasons: dict[int, str]

    def publish(self, job_id: int, state: str, kind: str = "state", **data: Any) -> None: ...

    def add_pipeline(self, pipeline_id: int, jobs: list[Job], state: str = "running", **changes: Any) -> None:
        """A pipeline of `jobs` (added to the fake's jobs with their pipeline id)."""
        for job in jobs:
            self.jobs[job.id] = replace(job, pipeline_id=pipeline_id)
        spec = jobs[0].spec if jobs else JobSpec(repo="https://github.com/acme/app.git", ref="refs/heads/main")
        record = PipelineRecord(id=pipeline_id, repo=spec.repo, ref=spec.ref, sha=spec.sha, event="push", spec=spec,
                                state=PipelineState(state), created_at=min((j.queued_at for j in jobs), default=0.0),
                                job_ids=tuple(j.id for j in jobs),
                                jobs_done=sum(j.state.is_terminal for j in jobs),
                                first_queued_at=min((j.queued_at for j in jobs), default=None), **changes)
        self.pipelines[pipeline_id] = record.to_dict()

    def pipeline_body(self, pipeline_id: int) -> dict[str, Any]:
        record = self.pipelines[pipeline_id]
        jobs = [self.jobs[job_id] for job_id in record.get("job_ids", []) if job_id in self.jobs]
        depths = job_depths(jobs)
        return {**record, "jobs": [pipeline_job_json(job, depths[job.id], self.wait_reasons.get(job.id)
                                                     if job.state is JobState.queued else None) for job in jobs]}

    def handle_pipelines(self, method: str, path: str, query: dict[str, str], body: Any) -> httpx.Response:
        if method == "GET" and path == "/pipelines":
            found = sorted(self.pipelines.values(), key=lambda p: -p["id"])
            for key in ("status", "repo"):
                if key in query:
                    found = [p for p in found if p.get("state" if key == "status" else key) == query[key]]
            limit = int(query.get("limit", "50"))
            return httpx.Response(200, json={"pipelines": found[:limit],
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
        for job_id in record["job_ids"]:
            job = self.jobs[job_id]
            if job.state is JobState.queued:
                self.jobs[job_id] = replace(job, state=JobState.cancelled)
                self.publish(job_id, "cancelled")
            running |= job.state is JobState.running
        record["state"] = "running" if running else "cancelled"
        return httpx.Response(200, json={"id": pipeline_id, "state": record["state"], "cancel_requested": True})

    def retry_pipeline(self, pipeline_id: int, failed_only: bool) -> httpx.Response:
        record = self.pipelines[pipeline_id]
        if not PipelineState(record["state"]).is_terminal:
            return _error(409, "wrong state", f"pipeline {pipeline_id} is {record['state']}; only a finished one "
                                             f"can be retried")
        if failed_only:
            again = [j for j in record["job_ids"] if self.jobs[j].state in (JobState.failure, JobState.skipped)]
            if not again:
                return _error(409, "wrong state", f"pipeline {pipeline_id} has no failed job to retry")
            for job_id in again:
                self.jobs[job_id] = replace(self.jobs[job_id], state=JobState.queued)
            record["state"] = "queued"
            return httpx.Response(201, json={"pipeline": pipeline_id, "jobs": again, "retry_of": pipeline_id})
        new_id = max(self.pipelines) + 1
        first = max(self.jobs) + 1
        jobs = [replace(self.jobs[j], id=first + i, state=JobState.queued, started_at=None, finished_at=None)
                for i, j in enumerate(record["job_ids"])]
        self.add_pipeline(new_id, jobs, "queued")
        return httpx.Response(201, json={"pipeline": new_id, "jobs": [j.id for j in jobs], "retry_of": pipeline_id})
