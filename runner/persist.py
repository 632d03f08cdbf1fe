"""Queue writes that must land even when the queue's database is away for a while (PostgreSQL restarted).

A job's end (complete / fail_infra) and, on PostgreSQL, its step rows are retried with a back-off until the
database answers: a refusal (the job is gone, or another runner holds it now) is an answer and ends the retries; a
fault (unreachable, locked, a broken connection) is not. On PostgreSQL the step rows are written off the event loop,
in order per job (StepWrites): while the server is down a pool checkout waits up to its timeout, and the loop must
keep serving HTTP, heartbeats and logs meanwhile. The job's end waits for its step rows first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from runner.errors import InvalidTransition, JobNotFound, QueueError

log = logging.getLogger(__name__)

T = TypeVar("T")
DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)  # seconds between attempts (the last repeats)
REPORT_EVERY = 60.0  # seconds between the warnings of one write that keeps failing


def is_fault(exc: QueueError) -> bool:
    """A fault of the database (retry it) rather than the queue's answer (JobNotFound, InvalidTransition)."""
    return not isinstance(exc, JobNotFound | InvalidTransition)


async def persist(call: Callable[[], T], what: str) -> T:
    """`call()` in a thread until it returns or refuses (re-raised); faults are retried with a back-off, forever:
    the caller holds the job's lease meanwhile, and a stopped server's running jobs are requeued at its start."""
    attempt, reported = 0, 0.0
    while True:
        try:
            result = await asyncio.to_thread(call)
        except QueueError as exc:
            if not is_fault(exc):
                raise
            if time.monotonic() - reported >= REPORT_EVERY:
                log.warning("%s: not recorded yet (%s); retrying until the queue answers", what, exc)
                reported = time.monotonic()
            await asyncio.sleep(DELAYS[min(attempt, len(DELAYS) - 1)])
            attempt += 1
            continue
        if attempt:
            log.info("%s: recorded after %d retries", what, attempt)
        return result


class StepWrites:
    """Per job, an ordered chain of background writes (step started, step finished, checked-out sha)."""

    def __init__(self) -> None:
        self._chains: dict[int, asyncio.Task[None]] = {}

    def add(self, job_id: int, write: Callable[[], object], what: str) -> None:
        self._chains[job_id] = asyncio.create_task(self._after(self._chains.get(job_id), write, what),
                                                   name=f"forgeci-steps-{job_id}")

    @staticmethod
    async def _after(previous: asyncio.Task[None] | None, write: Callable[[], object], what: str) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        try:
            await persist(write, what)
        except QueueError as exc:  # refused: the job is no longer this runner's (its end will be refused too)
            log.warning("%s: refused: %s", what, exc)

    async def flush(self, job_id: int) -> None:
        """Wait until every write of `job_id` so far has landed (or was refused)."""
        task = self._chains.pop(job_id, None)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
