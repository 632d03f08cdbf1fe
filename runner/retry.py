"""Retrying a finished job: a new job with the same spec, or one that resumes from the failed step's snapshot."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from runner.errors import InvalidTransition
from runner.models import JobState
from runner.queue import Queue

RETRY_OF = "retry_of"  # meta: the job this one retries
RESUME_FROM = "resume_from_job"  # meta: the job whose workspace snapshot this one starts from
RESUME_STEP = "resume_step"  # meta: index of the first step to run; the ones before it are `restored`
RESUMABLE = frozenset({JobState.failure, JobState.timeout})


@dataclass(frozen=True)
class Resume:
    """Where a retry from the failed step starts: the snapshot of job `job_id`, at step `step`."""

    job_id: int
    step: int

    @classmethod
    def of(cls, meta: Mapping[str, str]) -> Resume | None:
        """The resume point a job's meta names; None for an ordinary job. ValueError when the meta is malformed."""
        if RESUME_FROM not in meta and RESUME_STEP not in meta:
            return None
        try:
            job_id, step = int(meta[RESUME_FROM]), int(meta[RESUME_STEP])
        except (KeyError, ValueError):
            raise ValueError(f"malformed retry meta {RESUME_FROM}={meta.get(RESUME_FROM)!r} "
                             f"{RESUME_STEP}={meta.get(RESUME_STEP)!r}") from None
        if job_id < 1 or step < 0:
            raise ValueError(f"malformed retry meta {RESUME_FROM}={job_id} {RESUME_STEP}={step}")
        return cls(job_id, step)


def retry_job(queue: Queue, job_id: int, *, from_failed_step: bool = False) -> int:
    """Enqueue a new job like `job_id` (which must be finished); its meta says which job it retries.

    With `from_failed_step`, the new job restores the failure snapshot of `job_id` into a fresh workspace, at the
    same commit, and runs from the step that failed on; the job must have failed (or timed out) in a step and have
    a snapshot (pipeline `snapshot` policy `always` or `on_failure`, not yet pruned). InvalidTransition otherwise.
    """
    job = queue.get(job_id)
    if not job.state.is_terminal:
        raise InvalidTransition(f"job {job_id} is {job.state}; only a finished job can be retried")
    meta = {k: v for k, v in job.spec.meta.items() if k not in (RESUME_FROM, RESUME_STEP)}
    meta[RETRY_OF] = str(job_id)
    spec = job.spec
    if from_failed_step:
        if job.state not in RESUMABLE:
            raise InvalidTransition(f"job {job_id} is {job.state}; only a job that failed in a step can be retried "
                                    f"from its failed step")
        snapshot = queue.snapshot(job_id)
        if snapshot is None:
            raise InvalidTransition(f"job {job_id} has no workspace snapshot (its pipeline's `snapshot` policy, a "
                                    f"failed upload, or it was pruned); retry it without --from-failed-step")
        if snapshot.failed_step is None:
            raise InvalidTransition(f"the snapshot of job {job_id} records no failed step")
        meta |= {RESUME_FROM: str(job_id), RESUME_STEP: str(snapshot.failed_step)}
        spec = dataclasses.replace(spec, sha=snapshot.sha or spec.sha)
    return queue.enqueue(dataclasses.replace(spec, meta=meta))
