"""Backups of the queue database: online and verified, restored only into a stopped instance, nothing mixed up."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from runner.backup import BackupError, backup_database, inspect_database, restore_database
from runner.errors import InstanceLocked
from runner.layout import DataLayout
from runner.models import JobSpec, JobState
from runner.queue import MIGRATIONS, Queue
from runner.runtime import DataDirLock
from tests.runner.test_migrations import build

REPO = "https://git.example.test/acme/app.git"
ROOT = Path(__file__).resolve().parents[2]


def spec() -> JobSpec:
    return JobSpec(repo=REPO, ref="refs/heads/main")


@pytest.fixture
def layout(tmp_path: Path) -> DataLayout:
    layout = DataLayout(tmp_path / "data")
    layout.root.mkdir()
    layout.logs.mkdir()
    return layout


def test_a_backup_taken_while_jobs_are_written_holds_every_committed_job(layout: DataLayout, tmp_path: Path) -> None:
    committed: list[int] = []
    stop = threading.Event()

    def write() -> None:
        with Queue(layout.db, max_concurrent=1000) as writer:
            while not stop.is_set():
                job_id = writer.enqueue(spec())
                committed.append(job_id)  # after the commit: a backup started later must have it
                if job_id % 3 == 0:
                    claimed = writer.claim("r", 60)
                    assert claimed is not None
                    writer.complete(claimed.id, JobState.success, runner_id="r")

    Queue(layout.db).close()
    thread = threading.Thread(target=write)
    thread.start()
    try:
        backups = []
        for n in range(5):
            while len(committed) < 50 * (n + 1):
                stop.wait(0.01)
            seen = list(committed)
            info = backup_database(layout.db, tmp_path / f"backup-{n}.db")
            backups.append((seen, info))
    finally:
        stop.set()
        thread.join()
    for seen, info in backups:
        assert info.schema_version == len(MIGRATIONS)
        conn = sqlite3.connect(info.path)
        ids = {row[0] for row in conn.execute("SELECT id FROM jobs")}
        assert set(seen) <= ids, "a job committed before the backup started is missing from it"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one self-contained file
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        assert not list(info.path.parent.glob(f".{info.path.name}*")), "a temporary file was left behind"


def test_backup_refuses_a_missing_database_and_a_folder_as_target(layout: DataLayout, tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="no queue database"):
        backup_database(layout.db, tmp_path / "b.db")
    Queue(layout.db).close()
    with pytest.raises(BackupError, match="is a folder"):
        backup_database(layout.db, tmp_path)


def test_a_damaged_or_foreign_file_is_not_a_backup(layout: DataLayout, tmp_path: Path) -> None:
    with Queue(layout.db) as queue:
        kept = queue.enqueue(spec())
    good = backup_database(layout.db, tmp_path / "good.db").path
    torn = tmp_path / "torn.db"
    torn.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    for bad in (torn, garbage, other, tmp_path / "absent.db"):
        with pytest.raises(BackupError):
            restore_database(bad, layout)
    with Queue(layout.db) as queue:  # the instance's database was not touched by the refused restores
        assert queue.get(kept).state is JobState.queued
    assert not list(layout.root.glob("queue.db.before-restore-*"))


def test_restore_refuses_a_running_instance(layout: DataLayout, tmp_path: Path) -> None:
    Queue(layout.db).close()
    backup = backup_database(layout.db, tmp_path / "b.db").path
    lock = DataDirLock(layout.root)  # what `forgeci serve` holds
    lock.acquire()
    try:
        with pytest.raises(InstanceLocked, match="stop it first"):
            restore_database(backup, layout)
    finally:
        lock.release()


def test_restore_keeps_the_replaced_database_and_moves_logs_of_newer_jobs(layout: DataLayout, tmp_path: Path) -> None:
    with Queue(layout.db) as queue:
        old = [queue.enqueue(spec()) for _ in range(3)]
    backup = backup_database(layout.db, tmp_path / "b.db").path
    with Queue(layout.db) as queue:
        newer = [queue.enqueue(spec()) for _ in range(2)]
    for job_id in old + newer:
        layout.log_file(job_id).write_text(f'{{"n": 1, "t": 1.0, "s": "", "o": "system", "x": "job {job_id}"}}\n')

    report = restore_database(backup, layout, now=1_700_000_000)

    assert report.restored.rows["jobs"] == 3 and report.schema_after == len(MIGRATIONS)
    with Queue(layout.db) as queue:
        assert [j.id for j in queue.list_jobs()[0]] == sorted(old, reverse=True)
        # Ids continue from the backup's newest: the next job must not append to a forgotten job's log.
        assert queue.enqueue(spec()) == newer[0]
    assert not layout.log_file(newer[0]).exists() and layout.log_file(old[0]).exists()
    assert report.moved_logs is not None
    assert sorted(p.name for p in report.moved_logs.iterdir()) == sorted(f"{n}.log" for n in newer)
    assert report.previous is not None
    assert {row[0] for row in sqlite3.connect(report.previous).execute("SELECT id FROM jobs")} == set(old + newer)


def test_restore_migrates_a_backup_of_an_older_version(layout: DataLayout, tmp_path: Path) -> None:
    old = tmp_path / "v2.db"
    build(old, 2)
    before = old.read_bytes()
    report = restore_database(old, layout)
    assert (report.restored.schema_version, report.schema_after) == (2, len(MIGRATIONS))
    assert old.read_bytes() == before, "the backup file itself must not change"
    with Queue(layout.db) as queue:
        assert queue.cache_entry("acme/app/main/abc") is not None
        assert queue.get(1).spec.meta == {"pusher": "ada"}


def test_restore_refuses_a_backup_of_a_newer_forgeci(layout: DataLayout, tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    build(newer, len(MIGRATIONS))
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(BackupError, match="newer than this forgeci"):
        restore_database(newer, layout)
    assert not layout.db.exists()


def test_a_raw_copy_of_a_live_database_is_restored_with_its_wal(layout: DataLayout, tmp_path: Path) -> None:
    live = tmp_path / "copy" / "queue.db"
    live.parent.mkdir()
    writer = Queue(live)
    ids = [writer.enqueue(spec()) for _ in range(3)]
    # `cp queue.db* DIR` while the server runs: the newest commits are in queue.db-wal, not yet in queue.db.
    assert live.with_name("queue.db-wal").stat().st_size > 0
    report = restore_database(live, layout)
    writer.close()
    assert report.restored.rows["jobs"] == 3
    with Queue(layout.db) as queue:
        assert sorted(j.id for j in queue.list_jobs()[0]) == ids


def test_inspect_reports_what_a_backup_holds(tmp_path: Path) -> None:
    db = tmp_path / "v5.db"
    build(db, 5)
    info = inspect_database(db, readonly=False)
    assert (info.schema_version, info.rows["jobs"], info.rows["pipelines"], info.max_job_id) == (5, 6, 1, 11)
    assert "6 jobs, 1 pipelines" in info.summary()


def test_the_db_commands_back_up_and_restore(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with Queue(data / "queue.db") as queue:
        ids = [queue.enqueue(spec()) for _ in range(4)]
    config = tmp_path / "forgeci.toml"
    config.write_text(f'data_dir = "{data}"\n')

    def forgeci(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "forgeci_cli", "--config", str(config), *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)

    made = forgeci("db", "backup", str(tmp_path / "nightly.db"))
    assert made.returncode == 0, made.stderr
    assert "verified" in made.stdout and "4 jobs" in made.stdout
    (data / "queue.db").unlink()
    for suffix in ("-wal", "-shm"):
        (data / f"queue.db{suffix}").unlink(missing_ok=True)
    restored = forgeci("db", "restore", str(tmp_path / "nightly.db"))
    assert restored.returncode == 0, restored.stderr
    with Queue(data / "queue.db") as queue:
        assert sorted(j.id for j in queue.list_jobs()[0]) == ids
    missing = forgeci("db", "restore", str(tmp_path / "absent.db"))
    assert missing.returncode == 1 and "no such file" in missing.stderr
