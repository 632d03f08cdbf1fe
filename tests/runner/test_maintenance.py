"""Retention with an injected clock: old snapshots, unused caches, finished jobs and their logs go; the rest stays."""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.settings import RetentionSettings, Settings, StorageSettings
from runner.layout import DataLayout
from runner.maintenance import DAY, MaintenanceParts, prune
from runner.models import CacheEntry, JobSpec, JobState, SnapshotRecord
from runner.queue import Queue
from runner.store import FileStore, S3Location, S3Store
from tests.postgres import raw_sql
from tests.runner.test_store import free_port

NOW = 1_800_000_000.0
REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[MaintenanceParts, Clock]]:
    clock = Clock()
    settings = dataclasses.replace(Settings.default(), data_dir=tmp_path,
                                   retention=RetentionSettings(snapshot_days=7, cache_days=30, job_days=14))
    layout = DataLayout(tmp_path)
    layout.logs.mkdir()
    with Queue(layout.db, clock=clock) as queue:
        yield MaintenanceParts(settings, layout, queue, FileStore(layout.store)), clock


def put(parts: MaintenanceParts, key: str, size: int = 10, age_days: float = 0.0) -> None:
    parts.store.put_stream(key, io.BytesIO(b"x" * size))
    if isinstance(parts.store, FileStore):
        mtime = NOW - age_days * DAY
        os.utime(parts.store.root / key, (mtime, mtime))


def cache_entry(parts: MaintenanceParts, name: str, last_used_days_ago: float) -> CacheEntry:
    used = NOW - last_used_days_ago * DAY
    entry = CacheEntry(f"r/main/{name}", "r", "main", "img", ("node_modules",), f"caches/r/main/{name}/o.tar.zst",
                       100, "c" * 64, used - DAY, used)
    put(parts, entry.object, 100, last_used_days_ago + 1)
    assert parts.queue.add_cache_entry(entry)
    return entry


def snapshot(parts: MaintenanceParts, job_id: int, days_ago: float) -> SnapshotRecord:
    record = SnapshotRecord(job_id, f"snapshots/{job_id}/abc/t.tar.zst", "abc", "img", JobState.failure, 1, "test",
                            50, "d" * 64, NOW - days_ago * DAY)
    put(parts, record.key, 50, days_ago)
    parts.queue.put_snapshot(record)
    return record


def finished_job(parts: MaintenanceParts, clock: Clock, days_ago: float) -> int:
    clock.now = NOW - days_ago * DAY
    job_id = parts.queue.enqueue(JobSpec(repo="r", ref="main"))
    parts.queue.claim("runner", 60)
    parts.queue.complete(job_id, JobState.success)
    parts.layout.log_file(job_id).write_text("{}\n")
    clock.now = NOW
    return job_id


def test_prune_removes_what_retention_says_and_keeps_the_rest(world: tuple[MaintenanceParts, Clock]) -> None:
    parts, clock = world
    old_job, recent_job = finished_job(parts, clock, 20), finished_job(parts, clock, 3)
    newest = finished_job(parts, clock, 30)  # the newest id is never deleted: ids must not be handed out again
    old_snap, new_snap = snapshot(parts, old_job, 8), snapshot(parts, recent_job, 6)
    stale, fresh = cache_entry(parts, "stale", 31), cache_entry(parts, "fresh", 29)
    put(parts, "caches/r/main/lost/upload.tar.zst", 1000, age_days=2)  # an orphan old enough to go
    put(parts, "snapshots/99/abc/in-progress.tar.zst", 1000, age_days=0.1)  # maybe still being indexed
    put(parts, "elsewhere/not-ours", 5, age_days=100)

    metrics = "SELECT count(*) FROM job_metrics"
    assert raw_sql(parts.queue, metrics) == [(3,)]

    report = prune(parts, now=NOW)

    assert raw_sql(parts.queue, metrics) == [(1,)]  # the 3-day-old job's; 20 and 30 days went
    assert (report.snapshots, report.caches, report.jobs, report.logs, report.orphans) == (1, 1, 1, 1, 1)
    assert report.freed_bytes == old_snap.size + stale.size + 1000 and report.errors == ()
    assert parts.queue.snapshot(old_job) is None and parts.queue.snapshot(recent_job) == new_snap
    assert parts.queue.cache_entry(stale.key) is None and parts.queue.cache_entry(fresh.key) == fresh
    assert {o.key for o in parts.store.list("")} == {
        new_snap.key, fresh.object, "snapshots/99/abc/in-progress.tar.zst", "elsewhere/not-ours"}
    assert not parts.layout.log_file(old_job).exists() and parts.layout.log_file(recent_job).exists()
    assert {j.id for j in parts.queue.list_jobs()[0]} == {recent_job, newest}
    assert "pruned 1 snapshot(s), 1 cache(s), 1 job(s)" in report.summary()

    again = prune(parts, now=NOW)
    assert (again.snapshots, again.caches, again.jobs, again.orphans) == (0, 0, 0, 0)
    later = prune(parts, now=NOW + 2 * DAY)  # time moves on: the recent snapshot is now a week old
    assert later.snapshots == 1 and later.caches == 1 and later.orphans == 1


def test_a_restored_cache_counts_as_used(world: tuple[MaintenanceParts, Clock]) -> None:
    parts, clock = world
    entry = cache_entry(parts, "old-but-used", 40)
    parts.queue.touch_cache_entry(entry.key)  # the queue's clock says now
    assert prune(parts, now=NOW).caches == 0


def test_a_store_that_is_down_does_not_stop_job_pruning(world: tuple[MaintenanceParts, Clock]) -> None:
    parts, clock = world
    old_job = finished_job(parts, clock, 20)
    finished_job(parts, clock, 1)
    record = snapshot(parts, old_job, 30)
    dead = S3Store(S3Location.parse(f"s3://down?endpoint=http://127.0.0.1:{free_port()}"), "k", "s", backoff=0.01)
    report = prune(dataclasses.replace(parts, store=dead), now=NOW)
    assert report.jobs == 1 and report.snapshots == 0 and len(report.errors) == 2  # the snapshot, the orphan sweep
    assert parts.queue.snapshot(old_job) == record  # kept in the index: the next round retries it
    assert prune(parts, now=NOW).snapshots == 1


@pytest.mark.sqlite_file  # the command on a data dir's queue.db (on PostgreSQL: tests/cli/test_db_postgres.py)
def test_forgeci_maintenance_command(tmp_path: Path) -> None:
    data = tmp_path / "data"
    layout = DataLayout(data)
    data.mkdir()
    layout.logs.mkdir()
    with Queue(layout.db, clock=lambda: 1_000_000.0) as queue:  # 1970: everything is old
        job_id = queue.enqueue(JobSpec(repo="r", ref="main"))
        queue.claim("runner", 60)
        queue.complete(job_id, JobState.failure)
        queue.enqueue(JobSpec(repo="r", ref="main"))
    layout.log_file(job_id).write_text("{}\n")
    config = tmp_path / "forgeci.toml"
    config.write_text(f'data_dir = "{data}"\n')
    result = subprocess.run([sys.executable, str(REPO / "forgeci_cli.py"), "--config", str(config), "maintenance"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "1 job(s) with 1 log(s)" in result.stdout and not layout.log_file(job_id).exists()
    config.write_text(f'data_dir = "{tmp_path / "nothing-here"}"\n[storage]\nurl = "{StorageSettings().url}"\n')
    missing = subprocess.run([sys.executable, str(REPO / "forgeci_cli.py"), "--config", str(config), "maintenance"],
                             capture_output=True, text=True, cwd=REPO, timeout=120)
    assert missing.returncode == 1 and "no forgeci queue" in missing.stderr
