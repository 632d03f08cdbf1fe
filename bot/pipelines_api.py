"""The pipelines' JSON API: a paginated list, one pipeline with its jobs (their DAG depth, why each waits), cancel
and retry; plus the wait reasons the job views share."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from bot.auth import Access, Handler
from bot.keys import RUNTIME
from bot.parse import boolean, check_keys, id_of_text, query_limit, read_json
from runner.models import Job, JobState, PipelineRecord, need_depths
from runner.queue import Queue


def with_wait_reasons(queue: Queue, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Job dicts (Job.to_dict) with `wait_reason`: why each queued one is not running yet, None for the others
    (blocking: call it off the event loop)."""
    reasons = queue.wait_reasons([job["id"] for job in jobs if job["state"] == JobState.queued])
    return [{**job, "wait_reason": reasons.get(job["id"])} for job in jobs]


def job_depths(jobs: Sequence[Job]) -> dict[int, int]:
    """Each job's dependency depth, by id (runner.models.need_depths over the jobs' names)."""
    needs_of: dict[str, set[str]] = {}
    for job in jobs:
        needs_of.setdefault(job.name or "", set()).update(job.needs)
    depth = need_depths(needs_of)
    return {job.id: depth[job.name or ""] for job in jobs}


def pipeline_json(record: PipelineRecord) -> dict[str, Any]:
    """A pipeline as the API returns it: its trigger (`spec`), sha, state, times, job ids and progress."""
    return record.to_dict()


def pipeline_job_json(job: Job, depth: int, wait_reason: str | None) -> dict[str, Any]:
    """A job as its pipeline's view needs it: where it sits in the DAG and how it went, no spec and no steps."""
    return {"id": job.id, "name": job.name, "display": job.display or job.name, "needs": list(job.needs),
            "state": job.state, "error": job.error, "started_at": job.started_at, "finished_at": job.finished_at,
            "duration": job.duration, "attempts": job.attempts, "waiting": job.waiting,
            "wait_reason": wait_reason, "depth": depth}


def read_pipeline(queue: Queue, pipeline_id: int) -> dict[str, Any]:
    """`GET /pipelines/{id}`'s answer (blocking): the pipeline and its jobs in plan order."""
    record = queue.pipeline(pipeline_id)
    jobs = queue.jobs_of_pipeline(pipeline_id)
    # Two reads: the jobs are the newer, so the progress comes from them (a plan written in between shows).
    record = dataclasses.replace(record, job_ids=tuple(job.id for job in jobs),
                                 jobs_done=sum(job.state.is_terminal for job in jobs),
                                 first_queued_at=min((job.queued_at for job in jobs), default=None))
    reasons = queue.wait_reasons([job.id for job in jobs if job.state is JobState.queued])
    depths = job_depths(jobs)
    return {**pipeline_json(record),
            "jobs": [pipeline_job_json(job, depths[job.id], reasons.get(job.id)) for job in jobs]}


def _pipeline_id(request: web.Request) -> int:
    return id_of_text(request.match_info["id"], what="pipeline")


async def list_pipelines(request: web.Request) -> web.Response:
    """GET /pipelines?status=&repo=&limit=&cursor= -> {pipelines, next_cursor}, newest first."""
    query = request.query
    check_keys(query, (), ("status", "repo", "limit", "cursor"))
    limit = query_limit(request)
    records, cursor = await asyncio.to_thread(
        request.app[RUNTIME].queue.list_pipelines, status=query.get("status"), repo=query.get("repo"), limit=limit,
        cursor=query.get("cursor"))
    return web.json_response({"pipelines": [pipeline_json(record) for record in records], "next_cursor": cursor})


async def pipeline(request: web.Request) -> web.Response:
    """GET /pipelines/{id} -> the pipeline with its jobs: needs, states, durations, depth, why a queued one waits."""
    pipeline_id = _pipeline_id(request)
    return web.json_response(await asyncio.to_thread(read_pipeline, request.app[RUNTIME].queue, pipeline_id))


async def cancel_pipeline(request: web.Request) -> web.Response:
    """POST /pipelines/{id}/cancel -> {id, state}: its queued jobs end now, its running ones are stopped."""
    pipeline_id = _pipeline_id(request)
    check_keys(await read_json(request, optional=True), ())  # no options: refuse any rather than ignore it
    state = await request.app[RUNTIME].control.cancel_pipeline(pipeline_id)
    return web.json_response({"id": pipeline_id, "state": state, "cancel_requested": True})


async def retry_pipeline(request: web.Request) -> web.Response:
    """POST /pipelines/{id}/retry {failed_only?} -> 201 {pipeline, jobs, retry_of}: a new pipeline at the same sha,
    or (failed_only) its failed jobs and those they skipped again, in the same pipeline."""
    pipeline_id = _pipeline_id(request)
    body: Mapping[str, Any] = await read_json(request, optional=True)
    check_keys(body, (), ("failed_only",))
    failed_only = boolean(body, "failed_only")
    submitted = await request.app[RUNTIME].control.retry_pipeline(pipeline_id, failed_only=failed_only)
    answer = {"pipeline": submitted.pipeline_id, "jobs": list(submitted.job_ids), "retry_of": pipeline_id}
    if not submitted.job_ids:  # a new pipeline whose fetch failed: planning goes on, as after a submit
        return web.json_response({**answer, "planning": True}, status=202)
    return web.json_response(answer, status=201, headers={"Location": f"/pipelines/{submitted.pipeline_id}"})


PIPELINE_ROUTES: tuple[tuple[str, str, Handler, Access], ...] = (
    ("GET", "/pipelines", list_pipelines, "read"),
    ("GET", "/pipelines/{id}", pipeline, "read"),
    ("POST", "/pipelines/{id}/cancel", cancel_pipeline, "write"),
    ("POST", "/pipelines/{id}/retry", retry_pipeline, "write"),
)
