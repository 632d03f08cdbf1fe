"""Retention: prune snapshots, caches, finished jobs and their logs; hourly inside `forgeci serve`, or on demand."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from config.settings import Settings
from runner.cache_lru import evict_all
from runner.errors import JobNotFound, QueueError, RunnerError
from runner.image_build import ImageBuilder
from runner.podman_user import PodmanUser
from runner.layout import DataLayout
from runner.backend import open_queue
from runner.queue import Queue
from runner.queue.usage import usage_cutoff
from runner.store import FileStore, ObjectStore, StoreError, open_store

log = logging.getLogger(__name__)

METRICS_DAYS = 8  # the dashboard's longest range is a week
DAY = 86400.0
INTERVAL = 3600.0  # the hourly task
STATUS_FEED_HOURS = 1  # the commit statuses' feed of state changes (PostgreSQL) is posted within seconds
FIRST_RUN = 60.0  # after a start: a server restarted often must still prune
ORPHAN_AGE = DAY  # an unindexed object younger than this may be an upload whose index row is being written
PREFIXES = ("caches/", "snapshots/", "artifacts/")  # what forgeci writes to the store; anything else is not ours


class Parts(Protocol):
    """What pruning needs; a Runtime has it all, and so does MaintenanceParts (the CLI, without Podman)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def layout(self) -> DataLayout: ...

    @property
    def queue(self) -> Queue: ...

    @property
    def store(self) -> ObjectStore: ...


@dataclass(frozen=True)
class MaintenanceParts:
    settings: Settings
    layout: DataLayout
    queue: Queue
    store: ObjectStore
    images: ImageBuilder | None = None


@dataclass(frozen=True)
class PruneReport:
    """What one pruning round removed; `errors` are store or index failures it carried on after."""

    snapshots: int = 0
    caches: int = 0
    jobs: int = 0
    logs: int = 0
    orphans: int = 0  # store objects no index row refers to (an interrupted upload, a lost race)
    freed_bytes: int = 0  # of the snapshots, caches, artifacts and orphans
    errors: tuple[str, ...] = field(default_factory=tuple)
    artifacts: int = 0  # expired artifacts
    images: int = 0  # job images built from repositories, unused for retention.image_days

    def to_dict(self) -> dict[str, Any]:
        return {"snapshots": self.snapshots, "caches": self.caches, "jobs": self.jobs, "logs": self.logs,
                "orphans": self.orphans, "artifacts": self.artifacts, "images": self.images,
                "freed_bytes": self.freed_bytes, "errors": list(self.errors)}

    def summary(self) -> str:
        text = (f"pruned {self.snapshots} snapshot(s), {self.caches} cache(s), {self.jobs} job(s) with {self.logs} "
                f"log(s), {self.artifacts} artifact(s), {self.images} built image(s), {self.orphans} orphaned "
                f"object(s); {self.freed_bytes / 1e6:.1f} MB freed")
        return text + (f"; {len(self.errors)} error(s)" if self.errors else "")


def prune(parts: Parts, now: float | None = None) -> PruneReport:
    """Delete snapshots older than retention.snapshot_days, caches unused for cache_days (and, per repository, the
    least recently used past cache_bytes_per_repo), artifacts past their expiry,
    and jobs (with logs) finished more than job_days ago, as of `now` (default: the current time). Blocks: call it in
    a thread.

    A store that is down does not stop the rest: its errors are in the report, and the next round tries again.
    """
    now = time.time() if now is None else now
    retention = parts.settings.retention
    errors: list[str] = []
    freed = 0

    snapshots = 0
    for record in _guard(errors, lambda: parts.queue.snapshots_before(now - retention.snapshot_days * DAY), []):
        try:
            parts.store.delete(record.key)
        except StoreError as exc:
            errors.append(f"snapshot of job {record.job_id}: {exc}")
            continue  # kept in the index, so the next round retries the delete
        if _guard(errors, lambda: parts.queue.delete_snapshot(record.job_id, record.key), False):
            snapshots += 1
            freed += record.size

    caches = 0
    for entry in _guard(errors, lambda: parts.queue.cache_unused_since(now - retention.cache_days * DAY), []):
        try:
            parts.store.delete(entry.object)
        except StoreError as exc:
            errors.append(f"cache {entry.key}: {exc}")
            continue
        if _guard(errors, lambda: parts.queue.delete_cache_entry(entry.key), None) is not None:
            caches += 1
            freed += entry.size

    for entry in evict_all(parts.queue, parts.store, retention.cache_bytes_per_repo, errors):  # per-repo LRU
        caches += 1
        freed += entry.size

    artifacts, artifact_bytes = _prune_artifacts(parts, now, errors)
    freed += artifact_bytes
    job_ids: list[int] = _guard(errors, lambda: parts.queue.delete_finished_jobs(now - retention.job_days * DAY, now),
                                [])
    logs = 0
    for job_id in job_ids:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(parts.layout.log_file(job_id))
            logs += 1
        shutil.rmtree(parts.layout.service_logs(job_id), ignore_errors=True)  # its services' logs go with it
    logs += _prune_orphaned_logs(parts, now - (retention.job_days + 1) * DAY, errors)

    # The per-job metrics rows outlive their jobs so the dashboard's week view stays whole.
    _guard(errors, lambda: parts.queue.delete_metrics_before(now - max(retention.job_days, METRICS_DAYS) * DAY), 0)
    _guard(errors, lambda: parts.queue.delete_cache_results_before(now - max(retention.job_days, METRICS_DAYS) * DAY),
           0)
    _guard(errors, lambda: parts.queue.prune_usage(usage_cutoff(now)), 0)  # usage: 13 whole months and this one

    _guard(errors, parts.queue.prune_log_chunks, 0)  # a cluster's copies of the logs of jobs just deleted
    _guard(errors, lambda: parts.queue.prune_status_changes(now - STATUS_FEED_HOURS * 3600), 0)
    orphans, orphan_bytes = _prune_orphans(parts, now, errors)
    images = _prune_images(parts, now, errors)
    return PruneReport(snapshots, caches, len(job_ids), logs, orphans, freed + orphan_bytes, tuple(errors),
                       artifacts=artifacts, images=images)


def _prune_images(parts: Parts, now: float, errors: list[str]) -> int:
    """Remove the images forgeci built that no job used for retention.image_days (a Runtime's Podman user; the
    CLI's parts have one when the Podman user exists)."""
    builder: ImageBuilder | None = getattr(parts, "images", None)
    if builder is None:
        return 0
    try:
        count, problems = builder.prune(now, parts.settings.retention.image_days)
    except (RunnerError, OSError) as exc:
        errors.append(f"images: {exc}")
        return 0
    errors.extend(problems)
    return count


def _prune_artifacts(parts: Parts, now: float, errors: list[str]) -> tuple[int, int]:
    """Delete artifacts past their own expiry (before the jobs: a pipeline goes only once its artifacts have)."""
    count = size = 0
    for record in _guard(errors, lambda: parts.queue.expired_artifacts(now), []):
        if record.object is not None:
            try:
                parts.store.delete(record.object)
            except StoreError as exc:
                errors.append(f"artifact of job {record.job_id}: {exc}")
                continue  # kept in the index, so the next round retries the delete
        if _guard(errors, lambda: parts.queue.delete_artifact(record.id), False):
            count += 1
            size += record.size
    return count, size


def _prune_orphaned_logs(parts: Parts, before: float, errors: list[str]) -> int:
    """Delete logs untouched since `before` whose job is gone: a crash between the job's deletion and its log's, a
    restored backup older than the log folder. Only logs older than retention are asked about (one lookup each),
    so a normal round, where retention already took them with their jobs, asks about none."""
    count = 0
    try:
        candidates = [entry for entry in os.scandir(parts.layout.logs)
                      if entry.name.endswith(".log") and entry.name[:-4].isdigit()
                      and entry.stat(follow_symlinks=False).st_mtime < before]
    except FileNotFoundError:
        return 0
    except OSError as exc:
        errors.append(f"logs: {exc}")
        return 0
    for entry in candidates:
        try:
            parts.queue.state_of(int(entry.name[:-4]))
            continue  # its job is still there (queued or running for longer than retention): keep it
        except JobNotFound:
            pass
        except QueueError as exc:
            errors.append(f"queue: {exc}")
            return count
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            count += 1
    return count


def _prune_orphans(parts: Parts, now: float, errors: list[str]) -> tuple[int, int]:
    """Delete our objects that no index row refers to, once they are old enough not to be an upload in progress."""
    referenced = _guard(errors, parts.queue.stored_objects, None)
    if referenced is None:
        return 0, 0
    count = size = 0
    try:
        for prefix in PREFIXES:
            for obj in parts.store.list(prefix):
                if obj.key not in referenced and obj.modified < now - ORPHAN_AGE:
                    parts.store.delete(obj.key)
                    count += 1
                    size += obj.size
        if isinstance(parts.store, FileStore):
            parts.store.clean_tmp(now - ORPHAN_AGE)
    except (StoreError, OSError) as exc:
        errors.append(f"orphaned objects: {exc}")
    return count, size


def _guard(errors: list[str], call: Any, default: Any) -> Any:
    try:
        return call()
    except QueueError as exc:
        errors.append(f"queue: {exc}")
        return default


def prune_local(parts: Parts, now: float | None = None) -> PruneReport:
    """What only this coordinator's data dir holds: log files of jobs that are gone, images it built. On
    PostgreSQL every coordinator runs it; `prune` (the queue, the store and the holder's own files) runs on the one
    that holds the maintenance singleton."""
    now = time.time() if now is None else now
    errors: list[str] = []
    logs = _prune_orphaned_logs(parts, now - (parts.settings.retention.job_days + 1) * DAY, errors)
    images = _prune_images(parts, now, errors)
    return PruneReport(logs=logs, errors=tuple(errors), images=images)


async def maintenance_loop(parts: Parts, interval: float = INTERVAL, first_run: float = FIRST_RUN,
                           work: Any = None) -> None:
    """The hourly task of `forgeci serve`: prune (or `work`), log what went, never die."""
    delay = first_run
    work = work or prune
    while True:
        await asyncio.sleep(delay)
        delay = interval
        try:
            report = await asyncio.to_thread(work, parts)
        except Exception:  # a bug must not end the loop: the next round may work
            log.exception("maintenance failed")
            continue
        level = logging.WARNING if report.errors else logging.INFO
        log.log(level, "maintenance: %s", report.summary())
        for error in report.errors[:10]:
            log.warning("maintenance: %s", error)


@contextlib.contextmanager
def open_parts(settings: Settings, environ: Mapping[str, str] = os.environ) -> Iterator[MaintenanceParts]:
    """The queue and store of a data dir, without Podman (`forgeci maintenance` on the server host). On PostgreSQL
    the same retention deletes run there; its space comes back through autovacuum (forgeci runs no VACUUM)."""
    layout = DataLayout(settings.data_dir)
    queue = open_queue(settings, environ, create=False)
    store = open_store(settings, environ)
    try:
        user = PodmanUser.resolve(settings.runner.podman_user)
    except RunnerError:
        user = None  # no Podman user on this host: no images of ours either
    images = ImageBuilder.for_settings(settings.runner, user, layout.root, store) if user is not None else None
    try:
        yield MaintenanceParts(settings, layout, queue, store, images)
    finally:
        store.close()
        queue.close()
