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


class EngineError(RunnerError):
    """The container engine failed (service down, API error): an infrastructure fault, retried by the queue."""


class ImageMissing(EngineError):
    """The job's image is not in the Podman user's image storage."""


class InstanceLocked(RunnerError):
    """Another `forgeci serve` holds this data dir: two coordinators of one queue would reap each other's jobs."""

    def __init__(self, data_dir: str, pid: int | None) -> None:
        self.data_dir = data_dir
        self.pid = pid
        holder = f"pid {pid}" if pid else "another process"
        super().__init__(f"another forgeci serve ({holder}) is already running on {data_dir}; stop it first, "
                         f"or give this one another data_dir")
