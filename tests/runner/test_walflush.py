"""The early WAL flush (runner.queue.walflush): which transactions ask for it, and that the thread does it."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from runner.errors import JobNotFound
from runner.models import JobSpec, JobState
from runner.queue import Queue
from runner.queue import walflush
from runner.queue.walflush import FLUSH_EVERY, WalFlusher


class Recorder:
    """Stands in for walflush.flush: the files flushed, and an event per flush."""

    def __init__(self) -> None:
        self.flushed: list[str] = []
        self.done = threading.Event()

    def __call__(self, wal: str) -> None:
        self.flushed.append(wal)
        self.done.set()


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    found = Recorder()
    monkeypatch.setattr(walflush, "flush", found)
    monkeypatch.setattr(walflush, "FLUSHER", WalFlusher())
    import runner.queue.base

    monkeypatch.setattr(runner.queue.base, "FLUSHER", walflush.FLUSHER)
    return found


def test_every_flush_every_write_transactions_the_wal_is_flushed_by_the_thread(tmp_path: Path,
                                                                                recorder: Recorder) -> None:
    with Queue(tmp_path / "q.db") as queue:
        for _ in range(4):  # reads: never a reason to flush
            queue.active_counts()
        opened = queue._writes  # opening wrote (the migrations, the usage triggers)
        assert 0 < opened < FLUSH_EVERY
        for _ in range(FLUSH_EVERY - opened - 1):
            queue.enqueue(JobSpec(repo="https://git.example.test/a/b.git", ref="refs/heads/main"))
        assert recorder.flushed == [] and walflush.FLUSHER._thread is None
        queue.enqueue(JobSpec(repo="https://git.example.test/a/b.git", ref="refs/heads/main"))
        assert recorder.done.wait(10)
        assert recorder.flushed == [queue.path + "-wal"]
        assert walflush.FLUSHER._thread is not None and walflush.FLUSHER._thread.daemon
        assert queue._writes == 0


def test_reads_alone_never_flush(tmp_path: Path, recorder: Recorder) -> None:
    with Queue(tmp_path / "q.db") as queue:
        for _ in range(FLUSH_EVERY * 3):
            queue.active_counts()
            queue.running_jobs()
    assert recorder.flushed == []
    assert walflush.FLUSHER._thread is None  # never started


def test_a_failed_transaction_does_not_count(tmp_path: Path, recorder: Recorder) -> None:
    with Queue(tmp_path / "q.db") as queue:
        before = queue._writes
        for _ in range(FLUSH_EVERY * 2):
            with pytest.raises(JobNotFound):
                queue.complete(10_000, JobState.success)  # raised inside the transaction: rolled back
        assert queue._writes == before
    assert recorder.flushed == []


def test_flush_syncs_a_real_wal_and_leaves_a_missing_one_alone(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db") as queue:
        queue.enqueue(JobSpec(repo="https://git.example.test/a/b.git", ref="refs/heads/main"))
        wal = queue.path + "-wal"
        assert os.path.getsize(wal) > 0
        walflush.flush(wal)  # fdatasync of the live WAL: no error, nothing changed
        assert queue.active_counts() == (1, 0)
    walflush.flush(str(tmp_path / "missing.db-wal"))  # gone: left alone


def test_the_queue_still_works_with_the_flusher_running(tmp_path: Path) -> None:
    """The real thread flushing the WAL while jobs go through a whole cycle, more than once per flush interval."""
    with Queue(tmp_path / "q.db", max_concurrent=4) as queue:
        for i in range(FLUSH_EVERY * 3):
            job_id = queue.enqueue(JobSpec(repo="https://git.example.test/a/b.git", ref=f"refs/heads/b{i}"))
            job = queue.claim("r", 60)
            assert job is not None and job.id == job_id
            queue.complete(job_id, JobState.success, runner_id="r")
        assert queue.active_counts() == (0, 0)
    with Queue(tmp_path / "q.db") as again:
        assert again.state_of(job_id) is JobState.success
