"""Early write-back of the queue's WAL file, on a thread, so that a checkpoint's fsync finds it on disk already.

synchronous=NORMAL in WAL mode writes each commit to the WAL without an fsync; the checkpoint SQLite runs in the
committing connection (every 1,000 WAL pages) fsyncs the WAL first, and that fsync writes the 4 MB gathered since
the last one — about 10 ms on this kind of disk, during which the queue's lock (and so every queue call of the
process) waits. An fdatasync of the WAL every FLUSH_EVERY write transactions, off the commit path, leaves that fsync
only the last few transactions' pages. Nothing about durability changes (a commit is as durable as before, the
pages are only on disk sooner), nor how SQLite checkpoints: the thread never touches the database or its locks
(SQLite locks the database and -shm files, never -wal).
"""

from __future__ import annotations

import os
import threading

FLUSH_EVERY = 16  # write transactions between two early flushes of a WAL file


class WalFlusher:
    """One daemon thread per process flushing the WAL files asked for (started at the first request)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: set[str] = set()
        self._thread: threading.Thread | None = None

    def request(self, wal: str) -> None:
        """Flush `wal` soon (requests for one file coalesce); returns at once."""
        with self._cond:
            self._due.add(wal)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="forgeci-wal-flush", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _reset_after_fork(self) -> None:
        """A forked child has none of its parent's threads: start its own when it first asks."""
        self._cond = threading.Condition()
        self._due, self._thread = set(), None

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due:
                    self._cond.wait()
                due, self._due = self._due, set()
            for wal in due:
                flush(wal)


def flush(wal: str) -> None:
    """fdatasync one WAL file; a WAL that is gone (its last connection closed) or unreadable is left alone."""
    try:
        fd = os.open(wal, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fdatasync(fd)
    except OSError:
        pass  # the next checkpoint's own fsync reports any real write error
    finally:
        os.close(fd)


FLUSHER = WalFlusher()
os.register_at_fork(after_in_child=FLUSHER._reset_after_fork)
