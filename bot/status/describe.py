"""A job's state (and its runner's progress) as a commit status: state per design.md's table, a short description."""

from __future__ import annotations

from typing import Any

from bot.status.base import CommitStatus, short
from config.durations import format_duration
from runner.models import Job, JobState, StepState

FORGE_STATE: dict[JobState, str] = {
    JobState.queued: "pending", JobState.running: "pending",
    JobState.success: "success", JobState.skipped: "success",
    JobState.failure: "failure", JobState.timeout: "failure",
    JobState.cancelled: "error", JobState.error: "error",
}


def target_url(public_url: str, job_id: int) -> str:
    return f"{public_url.rstrip('/')}/dashboard/jobs/{job_id}"


def describe(job: Job, kind: str, data: dict[str, Any], *, context: str, public_url: str) -> CommitStatus:
    """The status for `job` as it is now; `kind` and `data` are the event's (a step's index, name and total)."""
    return CommitStatus(job.id, job.state, FORGE_STATE[job.state], short(_description(job, kind, data)),
                        target_url(public_url, job.id), context)


def _description(job: Job, kind: str, data: dict[str, Any]) -> str:
    state, error = job.state, data.get("error") or job.error or ""
    took = f" in {format_duration(job.duration)}" if job.duration is not None else ""
    if state is JobState.queued:
        return f"Queued again after: {error}" if error and job.attempts else "Queued"
    if state is JobState.running:
        if kind == "step" and isinstance(data.get("index"), int) and data.get("total"):
            return f"Running step {data['index'] + 1}/{data['total']}: {data.get('name', '')}"
        return "Running" if job.attempts <= 1 else f"Running (attempt {job.attempts})"
    if state is JobState.success:
        return f"Passed{took}"
    if state is JobState.skipped:
        return "Skipped: " + (error.removeprefix("skipped: ") or "the pipeline does not apply to this ref")
    if state is JobState.failure:
        failed = [step for step in job.steps if step.state is StepState.failure]
        if failed and (error.startswith("step ") or not error):
            step = failed[-1]  # the one that stopped the job: earlier ones had continue_on_error
            code = f" (exit {step.exit_code})" if step.exit_code is not None else ""
            return f"Failed at step {step.index + 1}: {step.name}{code}{took.replace(' in', ' after')}"
        return f"Failed: {error}" if error else "Failed"
    if state is JobState.timeout:
        return f"Timed out: {error}" if error else "Timed out"
    if state is JobState.cancelled:
        if error.lower().startswith("cancelled"):
            return "C" + error[1:]  # the runner's own words: "cancelled during step test"
        return f"Cancelled: {error}" if error else "Cancelled"
    return f"Error: {error}" if error else "Error"
