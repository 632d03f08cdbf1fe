"""Retrying a finished job: a new job with the same spec (the cache issue adds retry from the failed step)."""

from __future__ import annotations

import dataclasses

from runner.errors import InvalidTransition
from runner.queue import Queue


def retry_job(queue: Queue, job_id: int, *, from_failed_step: bool = False) -> int:
    """Enqueue a new job like `job_id` (which must be finished); its meta says which job it retries."""
    job = queue.get(job_id)
    if not job.state.is_terminal:
        raise InvalidTransition(f"job {job_id} is {job.state}; only a finished job can be retried")
    if from_failed_step:
        raise InvalidTransition("retry from the failed step needs workspace snapshots (not built yet)")
    meta = {**job.spec.meta, "retry_of": str(job_id)}
    return queue.enqueue(dataclasses.replace(job.spec, meta=meta))
