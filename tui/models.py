"""What the console's views share: the app's services they are handed, and the job arithmetic they all do."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from textual.signal import Signal

from client.api import Client
from client.models import TERMINAL, JobInfo, PipelineJob, PipelineServerEvent, ServerEvent
from tui import format as fmt


@dataclass(frozen=True)
class Services:
    """What the app hands its panels and screens, so that they never reach for the app itself."""

    client: Client
    clock: Callable[[], float]  # wall-clock seconds, to show how long jobs have run; tests pin it
    job_events: Signal[ServerEvent]  # every job event of /events, as it arrives
    resync: Signal[None]  # (re)connected or asked to: reload everything shown
    pipeline_events: Signal[PipelineServerEvent]  # every pipeline event of /events


def apply_event(job: JobInfo, event: ServerEvent) -> JobInfo:
    """The job as an event leaves it, without asking the server (an idle console makes no requests)."""
    data = event.data
    if event.kind == "state":
        changes: dict[str, Any] = {"state": event.state}
        if event.state == "running" and job.state != "running":
            changes |= {"started_at": event.t, "finished_at": None, "duration": None, "step_index": None,
                        "attempts": data.get("attempts", job.attempts)}
        elif event.state == "queued":
            changes |= {"started_at": None, "finished_at": None, "step_index": None}
        elif event.state in TERMINAL:
            changes |= {"finished_at": event.t, "cancel_requested": False,
                        "duration": None if job.started_at is None else max(0.0, event.t - job.started_at)}
        return replace(job, **changes)
    if event.kind in ("step", "step_done"):
        index, total = data.get("index"), data.get("total")
        return replace(job, state=event.state if event.state else job.state,
                       step_index=index if isinstance(index, int) else job.step_index,
                       step_total=total if isinstance(total, int) else job.step_total)
    if event.kind == "cancel_requested":
        return replace(job, cancel_requested=True)
    if event.kind == "priority" and isinstance(data.get("priority"), int):
        return replace(job, priority=data["priority"])
    if event.kind == "sha" and isinstance(data.get("sha"), str) and not job.sha:
        return replace(job, sha=data["sha"])  # a job submitted without one pinned the commit it checked out
    return job


def apply_job_event(job: PipelineJob, event: ServerEvent) -> PipelineJob:
    """The pipeline's job as a job event leaves it, before the screen asks the server again (for wait reasons)."""
    if event.kind == "cancel_requested":
        return replace(job, cancel_requested=True)
    if event.kind == "ready":  # its needs are done: it waits only for a slot now
        return replace(job, waiting=False)
    if event.kind != "state" or event.state == job.state:
        return job
    if event.state == "running":
        attempts = event.data.get("attempts")
        return replace(job, state="running", started_at=event.t, finished_at=None, duration=None, waiting=False,
                       wait_reason=None,
                       attempts=attempts if isinstance(attempts, int) and not isinstance(attempts, bool)
                       else job.attempts)
    if event.state == "queued":
        return replace(job, state="queued", started_at=None, finished_at=None, duration=None, error=None)
    error = event.data.get("error")
    return replace(job, state=event.state, finished_at=event.t, waiting=False, wait_reason=None,
                   cancel_requested=False, error=error if isinstance(error, str) else job.error,
                   duration=None if job.started_at is None else max(0.0, event.t - job.started_at))


def pipeline_named(event: ServerEvent) -> int | None:
    """The pipeline a job event names in its data (planned, or its failed jobs retried), if it names one."""
    value = event.data.get("pipeline")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def step_progress(job: JobInfo) -> str:
    """`2/5`: the step running (or done) of all steps, as far as the console knows them."""
    if job.step_total:
        done = job.step_total if job.terminal and job.state == "success" else (job.step_index or 0) + 1
        return f"{min(done, job.step_total)}/{job.step_total}"
    if job.steps:
        return f"{len(job.steps)}/?" if not job.terminal else f"{len(job.steps)}"
    return fmt.NONE


def job_duration(job: JobInfo, now: float) -> float | None:
    """How long the job ran, or has been running until `now`."""
    return job.duration if job.duration is not None else fmt.elapsed(job.started_at, job.finished_at, now)
