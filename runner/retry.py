"""How a retry is recorded in a job's meta (runner.control makes retries), and where a resumed one starts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from runner.models import JobState

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
