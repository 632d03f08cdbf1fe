"""Errors of the runner layer: the queue and everything that executes jobs."""

from __future__ import annotations

from config.errors import ForgeciError


class RunnerError(ForgeciError):
    """Base of every error the runner package raises on purpose."""


class QueueError(RunnerError):
    """The job queue failed (its database is unreadable, locked for too long, or too new)."""


class JobNotFound(QueueError):
    """No job has the given id (the HTTP layer answers 404)."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} not found")


class InvalidTransition(QueueError):
    """The job is not in a state that allows the operation (the HTTP layer answers 409)."""
