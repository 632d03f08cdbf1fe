"""A job's or a pipeline's state as a commit status: state per design.md's table, a short description."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.status.base import CommitStatus, short
from config.durations import format_duration
from runner.models import Job, JobState, PipelineRecord, PipelineState, StepState
from runner.queue import JobSummary

FORGE_STATE: dict[JobState, str] = {
    JobState.queued: "pending", JobState.running: "pending",
    JobState.success: "success", JobState.skipped: "success",
    JobState.failure: "failure", JobState.timeout: "failure",
    JobState.cancelled: "error", JobState.error: "error",
}
# A pipeline's status speaks in job states, so that every poster (GitLab's own names) maps it the same way.
AS_JOB_STATE: dict[PipelineState, JobState] = {
    PipelineState.planning: JobState.queued, PipelineState.queued: JobState.queued,
    PipelineState.running: JobState.running, PipelineState.success: JobState.success,
    PipelineState.failure: JobState.failure, PipelineState.cancelled: JobState.cancelled,
    PipelineState.error: JobState.error, PipelineState.skipped: JobState.skipped,  # forge state: success
}
FAILED_AS = {JobState.failure: "failed", JobState.timeout: "timed out", JobState.error: "errored"}
NAMED_FAILURES = 3  # failed jobs a pipeline's description names; the rest are counted


def target_url(public_url: str, job_id: int) -> str:
    return f"{public_url.rstrip('/')}/dashboard/jobs/{job_id}"


def pipeline_url(public_url: str, pipeline_id: int) -> str:
    return f"{public_url.rstrip('/')}/dashboard/pipelines/{pipeline_id}"


def job_context(context: str, display: str) -> str:
    """The context of one job of a pipeline of several: `forgeci/ci/test (python=3.12, db=sqlite)`."""
    return f"{context}/{display}"


def describe(job: Job, kind: str, data: dict[str, Any], *, context: str, public_url: str) -> CommitStatus:
    """The status for `job` as it is now; `kind` and `data` are the event's (a step's index, name and total)."""
    return CommitStatus(job.id, job.state, FORGE_STATE[job.state], short(_description(job, kind, data)),
                        target_url(public_url, job.id), context)


def describe_pipeline(record: PipelineRecord, jobs: Sequence[JobSummary], data: dict[str, Any], *, context: str,
                      public_url: str) -> CommitStatus:
    """The status of a pipeline's own context, from its state and its jobs' (`data`: its event's, which may say
    why it was cancelled or why planning goes on). Its link: the pipeline's dashboard page, its graph of jobs."""
    state = AS_JOB_STATE[record.state]
    shown = next((j for j in jobs if j.counts_as_failed), jobs[0] if jobs else None)
    return CommitStatus(shown.id if shown else 0, state, FORGE_STATE[state],
                        short(_pipeline_description(record, jobs, data)), pipeline_url(public_url, record.id),
                        context, pipeline_id=record.id)


def _jobs(count: int) -> str:
    return f"{count} job" if count == 1 else f"{count} jobs"


def _pipeline_description(record: PipelineRecord, jobs: Sequence[JobSummary], data: dict[str, Any]) -> str:
    state, error = record.state, data.get("error") or record.error or ""
    failed = [j for j in jobs if j.counts_as_failed]
    if state is PipelineState.planning:
        return f"Planning again after: {error}" if error else "Planning"
    if state is PipelineState.queued:
        return f"Queued: {_jobs(len(jobs))}"
    if state is PipelineState.running:
        done = sum(1 for j in jobs if j.state.is_terminal)
        return f"Running: {done} of {_jobs(len(jobs))} done" + (f", {len(failed)} failed" if failed else "")
    took = ""
    if record.finished_at is not None:
        took = f" in {format_duration(max(0.0, record.finished_at - (record.started_at or record.created_at)))}"
    if state is PipelineState.skipped:
        return "Skipped: " + next(((j.error or "").removeprefix("skipped: ") for j in jobs if j.error),
                                  "every job was ruled out by its filters")
    if state is PipelineState.success:
        skipped = [j for j in jobs if j.state is JobState.skipped]
        if jobs and len(skipped) == len(jobs):
            return "Skipped: " + ((skipped[0].error or "").removeprefix("skipped: ")
                                  or "the pipeline does not apply to this ref")
        allowed = sum(1 for j in jobs if j.state in FAILED_AS)  # failed with continue_on_error
        return (f"Passed: {_jobs(len(jobs) - len(skipped))}" + (f", {len(skipped)} skipped" if skipped else "")
                + took + (f" ({allowed} allowed to fail)" if allowed else ""))
    if state is PipelineState.failure:
        named = [f"{j.display} {FAILED_AS[j.state]}" for j in failed[:NAMED_FAILURES]]
        more = f" and {len(failed) - NAMED_FAILURES} more" if len(failed) > NAMED_FAILURES else ""
        return f"Failed: {', '.join(named)}{more}" if named else "Failed"
    if state is PipelineState.cancelled:
        return f"Cancelled: {error}" if error else "Cancelled"
    return f"Error: {error}" if error else "Error"


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
