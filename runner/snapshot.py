"""Workspace snapshots: a job's workspace at its end, in the object store, for retries from the failed step and
`forgeci debug`."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from config.settings import Settings
from runner.backend import open_queue
from runner.archive import ArchiveAborted, ArchiveError, ArchiveWriter, Compressor, extract
from runner.cache import Meter, Metered, Say, rate
from runner.errors import QueueError, RunnerError
from runner.layout import DataLayout
from runner.models import JobState, SnapshotRecord
from runner.engine import ContainerSpec
from runner.podman_cli import remove_tree_as, run_debug_container
from runner.podman_user import PodmanUser
from runner.queue import Queue
from runner.store import ObjectStore, StoreError, open_store

DEBUG_LABEL = "forgeci.debug"  # not the job label: the worker pool removes job containers nobody runs
# When each policy keeps a snapshot. A cancelled job has none: someone decided it does not matter (or a newer push
# superseded it), and a server stopping should not wait for an upload.
POLICY_STATES: Mapping[str, frozenset[JobState]] = {
    "always": frozenset({JobState.success, JobState.failure, JobState.timeout}),
    "on_success": frozenset({JobState.success}),
    "on_failure": frozenset({JobState.failure, JobState.timeout}),
    "never": frozenset(),
}


def should_snapshot(policy: str, state: JobState) -> bool:
    return state in POLICY_STATES.get(policy, frozenset())


def snapshot_key(job_id: int, sha: str, when: float) -> str:
    """`snapshots/{jobId}/{sha}/{timestamp}.tar.zst`, the timestamp in UTC to the millisecond."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(when)) + f"{int(when * 1000) % 1000:03d}Z"
    return f"snapshots/{job_id}/{sha or 'unknown'}/{stamp}.tar.zst"


class Snapshots:
    """Takes and restores workspace snapshots; the index lives in the queue's `snapshots` table."""

    def __init__(
        self, store: ObjectStore, queue: Queue, user: PodmanUser, *, compressor: Compressor = "zstandard",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.queue = queue
        self.user = user
        self.compressor = compressor
        self.clock = clock

    def take(
        self, job_id: int, workspace: Path, *, sha: str, image: str, state: JobState, failed_step: int | None,
        failed_step_name: str | None, say: Say, abort: threading.Event | None = None,
    ) -> SnapshotRecord | None:
        """Archive the whole workspace; never raises for the store, the archive or the index (a warning instead)."""
        now = self.clock()
        key = snapshot_key(job_id, sha, now)
        meter = Meter(say, "snapshot: saving the workspace")
        try:
            with ArchiveWriter(workspace, ["."], compressor=self.compressor, abort=abort) as writer:
                self.store.put_stream(key, Metered(writer, meter))
                info = writer.info()
        except ArchiveAborted:
            say("snapshot: cancelled")
            return None
        except (StoreError, ArchiveError) as exc:
            say(f"snapshot: warning: not saved ({exc})")
            return None
        record = SnapshotRecord(job_id, key, sha, image, state, failed_step, failed_step_name, info.size,
                                info.checksum, now)
        try:
            replaced = self.queue.put_snapshot(record)
        except QueueError as exc:
            say(f"snapshot: warning: not recorded ({exc})")
            with contextlib.suppress(StoreError):
                self.store.delete(key)
            return None
        if replaced is not None:  # an earlier attempt of the same job
            with contextlib.suppress(StoreError):
                self.store.delete(replaced.key)
        failed = f"; step {failed_step_name} failed" if failed_step_name else ""
        say(f"snapshot: saved {key} ({rate(info.size, meter.seconds)}{failed}); `forgeci debug {job_id}` opens it")
        return record

    def restore(self, record: SnapshotRecord, target: Path, say: Say, abort: threading.Event | None = None) -> None:
        restore_snapshot(self.store, record, target, self.user, say, abort)

    def delete(self, record: SnapshotRecord) -> None:
        """Forget a snapshot and delete its archive (StoreError propagates; the row is gone by then)."""
        self.queue.delete_snapshot(record.job_id, record.key)
        self.store.delete(record.key)


def restore_snapshot(
    store: ObjectStore, record: SnapshotRecord, target: Path, user: PodmanUser, say: Say,
    abort: threading.Event | None = None,
) -> None:
    """Extract a snapshot into the empty folder `target`, its files owned by the Podman user.

    Raises StoreError (ObjectMissing when it is gone) or ArchiveError (CorruptArchive, UnsafeArchive).
    """
    meter = Meter(say, f"snapshot: restoring {record.key}")
    owner = (user.uid, user.gid) if user.switch else None
    with store.get_stream(record.key) as stream:
        info = extract(stream, target, checksum=record.checksum, owner=owner, container_links=True, progress=meter,
                       abort=abort)
    say(f"snapshot: restored {record.key} of job {record.job_id} ({rate(info.size, meter.seconds)}, {info.files} files)")


# -- forgeci debug ------------------------------------------------------------------------------------------

DEFAULT_SHELL = ["sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi"]


def debug_job(
    settings: Settings, job_id: int, command: Sequence[str], environ: Mapping[str, str] = os.environ,
    say: Say = lambda text: print(text, file=sys.stderr, flush=True),
) -> int:
    """Open job `job_id`'s snapshot in a container of its image, on this host: an interactive shell, or `command`
    (its output on our stdout). Returns the container's exit code. Everything it changes is thrown away."""
    user = PodmanUser.resolve(settings.runner.podman_user)
    layout = DataLayout(settings.data_dir)
    if not settings.queue.url and not layout.db.exists():
        raise RunnerError(f"no forgeci data in {settings.data_dir} (is this the server's host and settings file?)")
    with open_queue(settings, environ) as queue:
        record = queue.snapshot(job_id)
        if record is None:
            try:
                queue.get(job_id)
            except QueueError:
                raise RunnerError(f"job {job_id} not found") from None
            raise RunnerError(f"job {job_id} has no workspace snapshot (the pipeline's `snapshot` policy, a failed "
                              f"upload, or it was pruned after retention.snapshot_days)")
    store = open_store(settings, environ)
    target = layout.workspaces / f"debug-{job_id}-{uuid.uuid4().hex[:8]}"
    try:
        layout.workspaces.mkdir(parents=True, exist_ok=True)
        target.mkdir(mode=0o755)
        user.chown(target)
        restore_snapshot(store, record, target, user, say)
        failed = f", where step {record.failed_step_name} failed" if record.failed_step_name else ""
        say(f"job {job_id} ({record.state}{failed}) at {record.sha[:12]} in {record.image}; /workspace is a copy")
        tty = sys.stdin.isatty() and sys.stdout.isatty()
        runner = settings.runner
        # The job's own hardening, limits and network: a debug session must not get more than the job had.
        spec = ContainerSpec(job_id=job_id, image=record.image, workspace=target,
                             env={"CI": "true", "FORGECI_JOB_ID": str(job_id)}, network=runner.network,
                             memory=runner.memory, pids_limit=runner.pids_limit, ulimits=runner.ulimits,
                             ca_bundle=runner.ca_bundle)
        return run_debug_container(user, spec, list(command or DEFAULT_SHELL), tty=tty,
                                   labels={DEBUG_LABEL: str(job_id)})
    finally:
        store.close()
        _remove_as_user(target, user)


def _remove_as_user(path: Path, user: PodmanUser) -> None:
    """Delete a folder a container wrote into (see remove_tree_as); a failure leaves it for maintenance."""
    with contextlib.suppress(OSError):
        remove_tree_as(user, path)
