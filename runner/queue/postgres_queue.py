"""The queue on PostgreSQL: the same Queue (every query mixin), its transactions on a PostgresDatabase.

Statements run translated (runner.queue.dialect); the few whose PostgreSQL form is not a translation are in
OVERRIDES, keyed by the SQLite statement itself, so a changed statement can never pick up a stale twin. `forgeci serve`
opens it for `[queue] url` (runner.backend). A transaction that wrote `jobs` NOTIFYs WAKE_CHANNEL at its commit;
the server's LISTEN thread (runner.wakeups) wakes its workers at another process's commits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from runner.queue import Queue
from runner.queue import jobs as _jobs
from runner.queue.dialect import postgres
from runner.queue.postgres import WAKE_CHANNEL, Listener, PostgresConnection, PostgresDatabase

# Claims: SQLite's BEGIN IMMEDIATE serializes them, so max_concurrent and the concurrency groups (counts over
# other rows, which no row lock guards) hold. On PostgreSQL a transaction-level advisory lock does the same for
# claimers only; FOR UPDATE SKIP LOCKED on the picked row lets a claim pass a job another writer (a cancel, a
# priority change) holds instead of waiting for it, and the claim sees every claim committed before it (READ
# COMMITTED: each statement's snapshot is taken after the lock).
CLAIM_LOCK = 0x666F7263
OVERRIDES: dict[str, tuple[str, ...]] = {
    _jobs._CLAIM: (
        f"SELECT pg_advisory_xact_lock({CLAIM_LOCK})",
        postgres(_jobs._CLAIM).replace("LIMIT 1)", "LIMIT 1 FOR UPDATE OF q SKIP LOCKED)", 1),
    ),
}


class PostgresQueue(Queue):
    """Queue on a PostgreSQL database (`url`: libpq url; `password` from queue.password_env)."""

    remote = True  # over the network: JobControl writes step rows off the event loop (runner.persist)

    def __init__(  # noqa: PLR0913 - QueueBase's arguments, plus the url's password
        self, url: str, *, password: str | None = None, max_concurrent: int = 2, max_retries: int = 3,
        clock: Callable[[], float] = time.time, pool_size: int = 8,
    ) -> None:
        if max_concurrent < 1 or max_retries < 0:
            raise ValueError("max_concurrent must be >= 1 and max_retries >= 0")
        self.max_concurrent, self.max_retries, self._clock = max_concurrent, max_retries, clock
        self._settlements: list[Any] = []
        self._lock = threading.Lock()  # guards nothing of the database (the pool does); kept for QueueBase's users
        self._db = PostgresDatabase(url, password, max_size=pool_size)  # migrates
        self.path = self._db.name

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[PostgresConnection]:  # type: ignore[override]
        with self._db.transaction(now=self._clock(), overrides=OVERRIDES, snapshot=begin == "BEGIN") as conn:
            yield conn
            if conn.wrote_jobs:  # delivered at commit to every LISTENer (runner.wakeups)
                conn.notify(WAKE_CHANNEL)

    def _lock_pipeline(self, conn: PostgresConnection, pipeline_id: int) -> None:  # type: ignore[override]
        """READ COMMITTED: two jobs of a pipeline ending at once would each see the other still running and leave
        the pipeline `running` for good. The row lock makes the second settle wait, and its next statement sees
        the first one's commit."""
        conn.raw.execute("SELECT 1 FROM pipelines WHERE id = %s FOR UPDATE", (pipeline_id,))

    def _migrate(self) -> None:
        """PostgresDatabase migrated at connect; the usage trigger is part of the PostgreSQL schema."""

    def listener(self) -> Listener:
        """A connection LISTENing for claimable work (wake_claimers)."""
        return self._db.listener(WAKE_CHANNEL)

    def wake_claimers(self) -> None:
        with self._db.transaction() as conn:
            conn.notify(WAKE_CHANNEL)
