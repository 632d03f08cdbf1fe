"""Dashboard pages of pipelines: the pipeline page with its job graph (and its live fragment), cancel and retry."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from bot.dashboard import dag
from bot.dashboard.views import checked_action, page, path_id, redirect, viewer
from bot.keys import RUNTIME
from runner.errors import InvalidTransition, PipelineNotFound, QuotaExceeded
from runner.models import JobState
from runner.runtime import Runtime

RETRYABLE = frozenset({JobState.failure, JobState.timeout, JobState.error, JobState.cancelled})


def _context(runtime: Runtime, pipeline_id: int) -> dict[str, Any]:
    queue = runtime.queue
    record = queue.pipeline(pipeline_id)
    jobs = queue.jobs_of_pipeline(pipeline_id)
    now = time.time()
    reasons = queue.wait_reasons([job.id for job in jobs if job.state is JobState.queued])
    retry_of = record.spec.meta.get("retry_of_pipeline")
    return {"pipeline": record, "jobs": jobs, "graph": dag.layout(jobs), "reasons": reasons, "now": now,
            "counts": dag.state_counts(jobs), "duration": dag.span(jobs, now), "retry_of": retry_of,
            "job_ids": " ".join(str(job.id) for job in jobs),
            "retryable": record.state.is_terminal and any(job.state in RETRYABLE for job in jobs), "sizes": {
                "box_w": dag.BOX_W, "box_h": dag.BOX_H, "head_h": dag.HEAD_H}}


def _not_found(request: web.Request, pipeline_id: int) -> web.Response:
    return page(request, "error.html", viewer(request), status=404, title="Pipeline not found",
                message=f"There is no pipeline {pipeline_id}: it never existed, or retention removed it.")


async def pipeline_page(request: web.Request) -> web.Response:
    who = viewer(request)
    pipeline_id = path_id(request)
    try:
        context = await asyncio.to_thread(_context, request.app[RUNTIME], pipeline_id)
    except PipelineNotFound:
        return _not_found(request, pipeline_id)
    return page(request, "pipeline.html", who, **context)


async def pipeline_fragment(request: web.Request) -> web.Response:
    who = viewer(request)
    try:
        context = await asyncio.to_thread(_context, request.app[RUNTIME], path_id(request))
    except PipelineNotFound:
        raise web.HTTPNotFound() from None
    return page(request, "_pipeline_live.html", who, **context)


async def cancel_action(request: web.Request) -> web.Response:
    checked = await checked_action(request)
    if isinstance(checked, web.Response):
        return checked
    pipeline_id = path_id(request)
    try:
        await request.app[RUNTIME].control.cancel_pipeline(pipeline_id)
    except PipelineNotFound:
        return _not_found(request, pipeline_id)
    except InvalidTransition:
        pass  # it finished meanwhile: the page shows how
    return redirect(f"/dashboard/pipelines/{pipeline_id}")


async def retry_action(request: web.Request) -> web.Response:
    """Retry: a new pipeline at the same sha (its page next); retry-failed: the failed jobs, in this pipeline."""
    checked = await checked_action(request)
    if isinstance(checked, web.Response):
        return checked
    pipeline_id = path_id(request)
    failed_only = request.path.endswith("/retry-failed")
    try:
        submitted = await request.app[RUNTIME].control.retry_pipeline(pipeline_id, failed_only=failed_only)
    except PipelineNotFound:
        return _not_found(request, pipeline_id)
    except InvalidTransition as exc:
        return page(request, "error.html", checked, status=409, title="Cannot retry", message=str(exc))
    except QuotaExceeded as exc:  # retry it once the quota allows
        return page(request, "error.html", checked, status=429, title="Quota exceeded", message=str(exc))
    return redirect(f"/dashboard/pipelines/{submitted.pipeline_id}")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/dashboard/pipelines/{id}", pipeline_page)
    router.add_get("/dashboard/pipelines/{id}/graph", pipeline_fragment)
    router.add_post("/dashboard/pipelines/{id}/cancel", cancel_action)
    router.add_post("/dashboard/pipelines/{id}/retry", retry_action)
    router.add_post("/dashboard/pipelines/{id}/retry-failed", retry_action)
