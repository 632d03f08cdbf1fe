"""The SQLite queue's WAL checkpointer (runner/queue/base.py's _Checkpointer): commits never checkpoint, yet the WAL
stays bounded under a steady stream of writes, and starts over once two connections on one file pause or a reader
of an old snapshot ends; a quiet queue and a closed one leave their writes in the database file; a checkpointer
that fails hands the work back to SQLite's own autocheckpoint."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from runner.models import JobSpec
from runner.queue import Queue, base

SPEC = JobSpec(repo="https://git.example.test/acme/app.git", ref="refs/heads/main", meta={"pusher": "ada"})
FRAME = 4096 + 24  # a WAL frame: the page and its header


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    """A WAL limit a test reaches in a few thousand commits (the server's is 4,000 frames)."""
    monkeypatch.setattr(base, "CHECKPOINT_EVERY", 20)
    monkeypatch.setattr(base, "WAL_RESTART_FRAMES", 400)


def jobs_in_database_file(path: Path, tmp_path: Path) -> int:
    """The jobs the database file itself holds, its WAL left out: what the checkpoints have copied into it."""
    alone = tmp_path / "alone.db"
    shutil.copyfile(path, alone)
    conn = sqlite3.connect(alone)
    try:
        return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])
    except sqlite3.DatabaseError:  # no such table yet, or a copy taken while a checkpoint was writing the file
        return 0
    finally:
        conn.close()


def wal_frames(path: Path) -> int:
    """Frames in the WAL now (a PASSIVE checkpoint's report; it copies them too, which changes nothing here)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return int(conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])
    finally:
        conn.close()


def test_the_queue_connection_leaves_checkpoints_to_the_thread(tmp_path: Path) -> None:
    with Queue(tmp_path / "queue.db") as queue:
        assert queue._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        assert queue._checkpointer is not None and queue._checkpointer._thread.is_alive()
        thread = queue._checkpointer._thread
    assert not thread.is_alive()  # closing the queue ends it


@pytest.mark.usefixtures("small")
def test_the_wal_stays_bounded_under_a_steady_stream_of_writes(tmp_path: Path) -> None:
    db = tmp_path / "queue.db"
    writes = 3000  # about 6,000 frames: 15 times the limit, had the WAL never started over
    with Queue(db) as queue:
        for i in range(writes):
            queue.enqueue(SPEC)
            if i % base.CHECKPOINT_EVERY == 0:
                time.sleep(0.001)  # a busy server's pace rather than a benchmark's: a loaded machine's thread runs
        # At most the limit plus what the writer appends while one checkpoint runs (its fsyncs: a few hundred
        # frames here, more on a loaded machine), against some 6,600 frames had the WAL never started over.
        assert db.with_name("queue.db-wal").stat().st_size <= 6 * base.WAL_RESTART_FRAMES * FRAME
        assert queue.active_counts() == (writes, 0)


@pytest.mark.usefixtures("small")
def test_two_connections_writing_at_once_each_checkpoint_and_the_wal_starts_over(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """As two processes on one file: while both write, a checkpoint of one copies what the other wrote too; once
    the writes pause (here: 50 ms without a wake-up), the WAL is copied and the next write starts it over."""
    monkeypatch.setattr(base, "IDLE_CHECKPOINT", 0.05)
    db = tmp_path / "queue.db"
    with Queue(db) as one, Queue(db) as two:
        for i in range(1000):
            (one if i % 2 else two).enqueue(SPEC)
        deadline = time.monotonic() + 10
        while jobs_in_database_file(db, tmp_path) < 1000 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert jobs_in_database_file(db, tmp_path) == 1000  # every write of both is in the database file
        one.enqueue(SPEC)
        assert wal_frames(db) <= 10  # started over
        assert two.active_counts() == (1001, 0)


@pytest.mark.usefixtures("small")
def test_a_reader_of_an_old_snapshot_holds_the_wal_only_while_it_reads(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "IDLE_CHECKPOINT", 0.05)
    db = tmp_path / "queue.db"
    with Queue(db) as queue:
        queue.enqueue(SPEC)
        reader = sqlite3.connect(db, isolation_level=None)
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1  # its snapshot: frames stay
        for _ in range(1000):
            queue.enqueue(SPEC)
        assert wal_frames(db) > 4 * base.WAL_RESTART_FRAMES  # nothing after its snapshot could start the WAL over
        reader.execute("COMMIT")
        reader.close()
        for _ in range(1000):
            queue.enqueue(SPEC)
        deadline = time.monotonic() + 10
        while jobs_in_database_file(db, tmp_path) < 2001 and time.monotonic() < deadline:
            time.sleep(0.02)  # the thread copies the rest once the writes pause
        queue.enqueue(SPEC)
        assert wal_frames(db) <= 10  # started over: nothing holds it any more
        assert queue.active_counts() == (2002, 0)


def test_a_quiet_queue_copies_its_last_writes_into_the_database_file(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "IDLE_CHECKPOINT", 0.05)
    db = tmp_path / "queue.db"
    with Queue(db) as queue:
        for _ in range(3):  # far fewer than CHECKPOINT_EVERY: no wake-up
            queue.enqueue(SPEC)
        deadline = time.monotonic() + 10
        while jobs_in_database_file(db, tmp_path) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert jobs_in_database_file(db, tmp_path) == 3


def test_closing_the_queue_checkpoints_what_it_wrote(tmp_path: Path) -> None:
    db = tmp_path / "queue.db"
    other = sqlite3.connect(db, isolation_level=None)  # another process's connection: the WAL outlives the queue
    try:
        with Queue(db) as queue:
            for _ in range(5):
                queue.enqueue(SPEC)
        assert jobs_in_database_file(db, tmp_path) == 5
        assert other.execute("SELECT count(*) FROM jobs").fetchone()[0] == 5
    finally:
        other.close()


def test_a_failed_checkpointer_hands_checkpoints_back_to_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    def broken(self: object) -> tuple[int, int, int]:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(base._Checkpointer, "checkpoint", broken)
    caplog.set_level(logging.ERROR, logger="runner.queue.base")
    with Queue(tmp_path / "queue.db") as queue:
        checkpointer = queue._checkpointer
        assert checkpointer is not None
        for _ in range(base.CHECKPOINT_EVERY):  # the last commit wakes it
            queue.enqueue(SPEC)
        checkpointer._thread.join(timeout=10)
        assert not checkpointer._thread.is_alive()
        assert queue._checkpointer is None
        assert queue._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == base.AUTOCHECKPOINT
        queue.enqueue(SPEC)  # the queue carries on
        assert queue.active_counts() == (base.CHECKPOINT_EVERY + 1, 0)
    assert "checkpointer" in caplog.text and "disk I/O error" in caplog.text
