"""Every error of the runner layer (the queue, the engine, workspaces, the store, archives, logs), under RunnerError;
translated at the edges: HTTP statuses (bot.errors), commit statuses, CLI exit codes, TUI notifications."""

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


class QuotaExceeded(RunnerError):
    """A [[quotas]] rule refuses a new pipeline: max_queued reached or the month's minutes used up (HTTP 429)."""


class EngineError(RunnerError):
    """The container engine failed (service down, API error): an infrastructure fault, retried by the queue."""


class ImageMissing(EngineError):
    """The job's image is not in the Podman user's image storage."""


class ContainerRefused(EngineError):
    """The engine answers but the container would not start (its command does not exist, say): for a service,
    the pipeline's fault."""


class InstanceLocked(RunnerError):
    """Another `forgeci serve` holds this data dir: two coordinators of one queue would reap each other's jobs."""

    def __init__(self, data_dir: str, pid: int | None) -> None:
        self.data_dir = data_dir
        self.pid = pid
        holder = f"pid {pid}" if pid else "another process"
        super().__init__(f"another forgeci serve ({holder}) is already running on {data_dir}; stop it first, "
                         f"or give this one another data_dir")


class StoreError(RunnerError):
    """The object store failed: unreachable, refused the request, or a local I/O error. Jobs carry on without it."""


class ObjectMissing(StoreError):
    """No object has that key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no object {key!r} in the store")
        self.key = key


class ArchiveError(RunnerError):
    """An archive could not be written or read."""


class CorruptArchive(ArchiveError):
    """The archive's bytes are damaged: wrong checksum, bad zstd frame, bad tar header, or cut short."""


class UnsafeArchive(ArchiveError):
    """A member would land outside the target, write through a link, or create a device: extraction stops."""

    def __init__(self, member: str, reason: str) -> None:
        super().__init__(f"refused member {member!r}: {reason}")
        self.member = member
        self.reason = reason


class ArchiveAborted(ArchiveError):
    """The job was cancelled while its archive was being written or read."""


class LogError(RunnerError):
    """A log line is not a valid JSON LogLine, or a closed log was written to."""


class WorkspaceError(RunnerError):
    """A workspace could not be prepared, copied or removed.

    `infra` is True for infrastructure faults the queue retries: the network, the server, the disk, an unknown or
    unreachable repository (a forge answers "not found" for a while after a rename, or for a bad token). It is
    False when retrying cannot help: the commit or ref does not exist in a repository that answered, or the
    request itself is invalid.
    """

    def __init__(self, message: str, *, infra: bool) -> None:
        super().__init__(message)
        self.infra = infra


class PipelineNotFound(QueueError):
    """No pipeline has the given id (the HTTP layer answers 404)."""

    def __init__(self, pipeline_id: int) -> None:
        self.pipeline_id = pipeline_id
        super().__init__(f"pipeline {pipeline_id} not found")
