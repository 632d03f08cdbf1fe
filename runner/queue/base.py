"""The queue's connection: one autocommit SQLite connection, its pragmas, and explicit transactions."""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Self

from config.errors import ConfigError, ConfigIssue
from runner.errors import QueueError
from runner.queue.schema import migrate

log = logging.getLogger(__name__)

BUSY_TIMEOUT = 10.0  # seconds a writer waits for another connection's transaction before giving up
CACHE_KIB = 64 * 1024  # page cache per connection; SQLite allocates it as pages are read, not up front
CHECKPOINT_EVERY = 100  # write transactions between two wake-ups of the checkpointer (a few hundred WAL pages)
WAL_RESTART_FRAMES = 4_000  # WAL frames (16 MiB of pages) past which the checkpointer makes the WAL start over
MAX_ROUNDS_BEHIND = 10  # wake-ups without a checkpoint after which the committing connection checkpoints itself
IDLE_CHECKPOINT = 1.0  # seconds without a wake-up after which the checkpointer copies the few writes since
AUTOCHECKPOINT = 1_000  # SQLite's default wal_autocheckpoint, for a connection without its checkpointer


class QueueBase:
    """The connection every part of the queue (jobs, deliveries, index, metrics) runs its transactions on."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_concurrent: int = 2,
        max_retries: int = 3,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_concurrent < 1 or max_retries < 0:
            raise ValueError("max_concurrent must be >= 1 and max_retries >= 0")
        self.path = os.fspath(path)
        self.max_concurrent = max_concurrent
        self.max_retries = max_retries  # automatic retries: max_retries + 1 attempts in all
        self._clock = clock
        self._settlements: list[Any] = []  # what settling pipelines changed, for job control (take_settlements)
        self._writes = 0  # write transactions since the checkpointer was last woken
        self._checkpointer: _Checkpointer | None = None
        # One connection behind a lock: sqlite3 connections are not safe for concurrent use, and the
        # queue's transactions are short enough that a second connection per thread would buy nothing.
        self._lock = threading.Lock()
        try:
            # Autocommit (isolation_level=None): transactions are exactly the explicit BEGINs of _transaction.
            self._conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode = WAL")  # readers never block the writer
            # NORMAL in WAL mode survives any process crash; only an OS crash or power loss can lose the
            # last transactions — the trade the README documents for a several-fold faster commit.
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            # Claims touch rows anywhere in the table (by priority, not age): keep it all in memory. The
            # default 2 MiB cache holds about 5,000 jobs; a page read from the OS makes a claim 30% slower.
            self._conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        except sqlite3.Error as exc:
            raise QueueError(f"cannot open the queue database {self.path}: {exc}") from exc
        try:
            self._migrate()
            self._checkpointer = _Checkpointer(self)
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        with self._lock:
            self._conn.close()

    def _wake_checkpointer(self) -> None:
        """CHECKPOINT_EVERY write transactions have committed since the last wake-up (_Transaction counts them, in
        the transaction's lock). A thread that has not checkpointed for MAX_ROUNDS_BEHIND wake-ups (starved of CPU,
        stuck) is not waited for: this connection checkpoints, as SQLite would have long before."""
        self._writes = 0
        checkpointer = self._checkpointer
        if checkpointer is None:
            return
        checkpointer.rounds_behind += 1
        if checkpointer.rounds_behind > MAX_ROUNDS_BEHIND:
            checkpointer.rounds_behind = 0
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:  # the transaction committed: its caller must not see this as its failure
                log.warning("checkpointing %s: %s", self.path, exc)
        checkpointer.wake()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _settle_job(self, conn: sqlite3.Connection, job_id: int) -> Any:
        """Settle the pipeline of a job that just ended (runner.queue.pipelines); None here: no pipelines."""
        return None

    def _quota_filter(self, conn: sqlite3.Connection) -> str | None:
        """The queued jobs a claim skips for quotas (runner.queue.quotas); None here: no quotas."""
        return None

    def _settled(self, settlement: Any) -> None:
        """Keep what a committed transaction's settling changed until job control takes it."""
        if settlement:
            self._settlements.append(settlement)

    def take_settlements(self) -> list[Any]:
        """What settling pipelines changed since the last call (job control publishes and acts on it). A worker
        thread may append meanwhile (the webhook committer's next batch while the loop answers the last): the
        list is emptied item by item, never swapped, so an append during the take is taken now or next time."""
        pending, taken = self._settlements, []
        while pending:
            try:
                taken.append(pending.pop(0))
            except IndexError:  # another taker emptied it meanwhile
                break
        return taken

    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> _Transaction:
        """One transaction. IMMEDIATE takes the write lock up front, so a writer waits its turn (busy_timeout)
        instead of failing to upgrade a read lock; plain BEGIN gives readers one consistent snapshot."""
        return _Transaction(self, begin)

    def _migrate(self) -> None:
        with self._transaction() as conn:
            migrate(conn, self.path)


class _Transaction:
    """QueueBase._transaction's context: a class, not a generator, since every queue call pays for it."""

    __slots__ = ("_begin", "_queue")

    def __init__(self, queue: QueueBase, begin: str) -> None:
        self._queue, self._begin = queue, begin

    def __enter__(self) -> sqlite3.Connection:
        queue = self._queue
        queue._lock.acquire()
        try:
            queue._conn.execute(self._begin)
        except BaseException as exc:
            queue._lock.release()
            if isinstance(exc, sqlite3.Error):
                raise QueueError(f"queue database {queue.path}: {exc}") from exc
            raise
        return queue._conn

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        queue = self._queue
        conn = queue._conn
        try:
            if kind is None:
                try:
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                if self._begin != "BEGIN":  # a write transaction: every CHECKPOINT_EVERY, wake the checkpointer
                    queue._writes += 1
                    if queue._writes >= CHECKPOINT_EVERY:
                        queue._wake_checkpointer()
                return
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error as error:
            raise QueueError(f"queue database {queue.path}: {error}") from error
        finally:
            queue._lock.release()
        if isinstance(exc, sqlite3.Error):
            raise QueueError(f"queue database {queue.path}: {exc}") from exc


class _Checkpointer:
    """Checkpoints the queue's WAL on a thread and a connection of its own, so that no commit waits for it.

    SQLite's automatic checkpoint runs in the connection that commits past wal_autocheckpoint pages: that commit
    (a webhook's 202, a claim) then copies the WAL into the database and fsyncs both files, several milliseconds.
    Here the queue's connection does not checkpoint (wal_autocheckpoint = 0); its commits wake this thread every
    CHECKPOINT_EVERY write transactions, and the thread runs a PASSIVE checkpoint, which never blocks a writer or a
    reader. Durability is unchanged: a commit is in the WAL either way (synchronous = NORMAL), a checkpoint only
    moves it into the database file.

    A PASSIVE checkpoint does not start the WAL over: the next writer does, when the WAL was wholly copied as its
    transaction began. Under a steady stream of writes it never is (the writers append while the checkpoint runs)
    and the WAL would grow without end, so once it passes WAL_RESTART_FRAMES the thread runs a RESTART checkpoint,
    which holds every writer back (this process's on the queue's lock, other processes' in SQLite's busy handler)
    while it copies the frames written meanwhile (a few ms, every few thousand frames) and the readers of the WAL
    finish; the next write starts the WAL over. A reader of an old snapshot (another process: this one's readers
    share the queue's connection) holds the WAL until it ends, as it would hold SQLite's own checkpoint. A second
    without a wake-up, the thread copies what was written since the last one, so a quiet server's WAL starts
    over too.

    The thread is woken, never waited for: while a checkpoint runs the WAL grows by what the writers append (a few
    hundred frames; more while the disk is slow to fsync), and the RESTART holding them back catches that up. A
    thread that falls MAX_ROUNDS_BEHIND wake-ups behind without checkpointing at all (no CPU for it) has the
    committing connection checkpoint in its place, as SQLite would have.

    Several processes on one file each run one: SQLite runs one checkpoint at a time, and a PASSIVE one that finds
    another running returns at once. Closing the queue checkpoints once more (a short-lived CLI leaves its writes
    in the database file; the last connection to close deletes the WAL, as always). If the thread fails, it says
    so in the log and the queue's connection checkpoints for itself again, as SQLite does by default.
    """

    # Seconds a RESTART waits for another process's write transaction or reader (its busy timeout; a PASSIVE
    # checkpoint waits for nothing): then it gives up until the next round, rather than hold the writers longer.
    RESTART_WAIT = 0.01

    def __init__(self, queue: QueueBase) -> None:
        self._queue = queue
        self._wake = threading.Event()
        self._stopping = False
        self.rounds_behind = 0  # wake-ups since its last checkpoint (QueueBase._wake_checkpointer)
        self._conn = sqlite3.connect(queue.path, timeout=self.RESTART_WAIT, isolation_level=None,
                                     check_same_thread=False)
        queue._conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._thread = threading.Thread(target=self._run, name=f"checkpoint {queue.path}", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Checkpoint what the WAL holds (a short-lived process leaves its writes in the database file), end the
        thread and close its connection."""
        self._stopping = True
        self._wake.set()
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        try:
            while True:
                woken = self._wake.wait(IDLE_CHECKPOINT)
                self._wake.clear()
                if woken or self._queue._writes:  # or a quiet moment after a few writes: the WAL starts over
                    self._queue._writes = 0
                    self.checkpoint()
                    self.rounds_behind = 0
                if self._stopping:
                    return
        except Exception:
            log.exception("the WAL checkpointer of %s failed; the queue's connection checkpoints for itself again",
                          self._queue.path)
            self._fall_back()

    def checkpoint(self) -> tuple[int, int, int]:
        """(busy, WAL frames, frames copied): PRAGMA wal_checkpoint's row of the last checkpoint run."""
        found: tuple[int, int, int] = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        busy, frames, copied = found
        if not busy and frames > WAL_RESTART_FRAMES and copied == frames:
            # RESTART copies the frames written during the PASSIVE one, holding every writer back (this process's
            # on the queue's lock, so they do not sleep in SQLite's busy handler), and waits for the readers of
            # the WAL to finish: the next write starts the WAL over. Tried only when nothing held the PASSIVE one
            # back (a reader of an old snapshot would hold this one too), and for at most RESTART_WAIT.
            with self._queue._lock:
                found = self._conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        return found

    def _fall_back(self) -> None:
        queue = self._queue
        with queue._lock:
            queue._checkpointer = None
            try:
                queue._conn.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT}")
            except sqlite3.Error:  # the queue was closed meanwhile
                pass
        try:
            self._conn.close()
        except sqlite3.Error:
            pass


def encode_cursor(order: str, key: list[int]) -> str:
    return base64.urlsafe_b64encode(json.dumps([order, *key]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, order: str, size: int) -> list[int]:
    """The sort key of the last row of the previous page; a cursor of another order or a forged one is refused."""
    try:
        tag, *key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError) as exc:
        raise _bad_cursor("cursor", "a cursor from a previous page", cursor) from exc
    if tag != order or len(key) != size or not all(type(k) is int for k in key):
        raise _bad_cursor("cursor", f"a cursor from a previous order={order} page", cursor)
    return key


def _bad_cursor(key: str, expected: str, got: object) -> ConfigError:
    return ConfigError(ConfigIssue("request", key, f"expected {expected}, got {got!r}"))
