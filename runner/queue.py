"""The SQLite job queue: durable, prioritized, leased, shared by threads and processes on one database file."""

from __future__ import annotations

import base64
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from config.errors import ConfigError, ConfigIssue
from runner.errors import InvalidTransition, JobNotFound, QueueError
from runner.models import (
    MAX_PRIORITY, MIN_PRIORITY, STEP_ENDS, BucketStats, CacheEntry, Job, JobMetric, JobSpec, JobState, RangeStats,
    SnapshotRecord, StepRecord, StepState, valid_priority,
)

BUSY_TIMEOUT = 10.0  # seconds a writer waits for another connection's transaction before giving up
CACHE_KIB = 64 * 1024  # page cache per connection; SQLite allocates it as pages are read, not up front

# Schema migrations, applied in order; PRAGMA user_version counts the applied ones. Never edit a released
# entry: append a new script (ALTER TABLE ... ADD COLUMN, CREATE TABLE ...) so existing data is kept.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id                INTEGER PRIMARY KEY,  -- never reused: retention always keeps the newest job
        repo              TEXT    NOT NULL,
        ref               TEXT    NOT NULL,
        sha               TEXT,
        event             TEXT    NOT NULL,
        priority          INTEGER NOT NULL CHECK (priority BETWEEN 0 AND 10),
        concurrency_group TEXT,
        fork              INTEGER NOT NULL DEFAULT 0,
        pr_number         INTEGER,
        base_ref          TEXT,
        pipeline          TEXT,                               -- JSON, or NULL: read .forgeci.toml after clone
        env               TEXT    NOT NULL DEFAULT '{}',      -- JSON
        meta              TEXT    NOT NULL DEFAULT '{}',      -- JSON
        state             TEXT    NOT NULL DEFAULT 'queued',
        -- Dispatch order is (priority DESC, seq, id): enqueue leaves seq at 0 so a priority is FIFO by id;
        -- a requeue sets it below the priority's minimum so a retried job goes to the front.
        seq               INTEGER NOT NULL DEFAULT 0,
        attempts          INTEGER NOT NULL DEFAULT 0,
        runner_id         TEXT,
        lease_expires     REAL,
        cancel_requested  INTEGER NOT NULL DEFAULT 0,
        queued_at         REAL    NOT NULL,
        started_at        REAL,
        finished_at       REAL,
        error             TEXT,
        cache_hit         INTEGER
    );
    -- The one secondary index, partial so it stays as small as the queue rather than the history: the
    -- running jobs (counted for max_concurrent and the group check), then the queued ones in dispatch
    -- order (state DESC puts 'running' first). A claim moves an entry from the head of the queued part
    -- to the running part next to it, so a claim or a completion rewrites two pages: the row and one leaf.
    CREATE INDEX jobs_active ON jobs (state DESC, priority DESC, seq) WHERE state IN ('queued', 'running');
    CREATE TABLE steps (
        job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        idx         INTEGER NOT NULL,
        name        TEXT    NOT NULL,
        state       TEXT    NOT NULL,
        exit_code   INTEGER,
        started_at  REAL,
        finished_at REAL,
        PRIMARY KEY (job_id, idx)
    ) WITHOUT ROWID;
    """,
    # 2: the cache index (runner.cache) and workspace snapshots (runner.snapshot).
    """
    CREATE TABLE cache_entries (
        key        TEXT    PRIMARY KEY,            -- {repo}/{scope}/{hash}
        repo       TEXT    NOT NULL,
        scope      TEXT    NOT NULL,
        image      TEXT    NOT NULL,
        paths      TEXT    NOT NULL,               -- JSON list, for restore-keys fallbacks with the same paths
        object     TEXT    NOT NULL,               -- store key of the archive: unique per upload, so a racing
                                                   -- second upload of the key never replaces the indexed one
        size       INTEGER NOT NULL,
        checksum   TEXT    NOT NULL,               -- sha256 of the archive
        created_at REAL    NOT NULL,
        last_used  REAL    NOT NULL,
        hits       INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE INDEX cache_newest ON cache_entries (repo, scope, created_at DESC);
    CREATE INDEX cache_last_used ON cache_entries (last_used);
    CREATE TABLE snapshots (
        job_id           INTEGER PRIMARY KEY,      -- one per job: a later attempt's snapshot replaces it
        key              TEXT    NOT NULL,         -- snapshots/{jobId}/{sha}/{timestamp}.tar.zst
        sha              TEXT    NOT NULL,
        image            TEXT    NOT NULL,
        state            TEXT    NOT NULL,         -- the job's outcome when it was taken
        failed_step      INTEGER,                  -- index of the step that failed the job
        failed_step_name TEXT,
        size             INTEGER NOT NULL,
        checksum         TEXT    NOT NULL,
        created_at       REAL    NOT NULL
    );
    CREATE INDEX snapshots_created ON snapshots (created_at);
    """,
    # 3: webhook deliveries, so a redelivery answers with the jobs it already made (bot.webhooks).
    """
    CREATE TABLE deliveries (
        forge       TEXT NOT NULL,
        delivery_id TEXT NOT NULL,
        job_ids     TEXT NOT NULL DEFAULT '[]',   -- JSON list
        received_at REAL NOT NULL,
        PRIMARY KEY (forge, delivery_id)
    ) WITHOUT ROWID;
    CREATE INDEX deliveries_received ON deliveries (received_at);  -- pruning old ones is one index seek
    """,
    # 4: one metrics row per finished job (bot.metrics). A trigger writes it, so every path that ends a job
    # (complete, retries used up, a queued job cancelled) records one in the same transaction; kept in time
    # order apart from `jobs`, so a range query reads a small slice of a small table, and outlives job retention.
    """
    CREATE TABLE job_metrics (
        finished_at REAL    NOT NULL,
        job_id      INTEGER NOT NULL,
        state       TEXT    NOT NULL,
        duration    REAL,                          -- seconds of the last attempt; NULL when it never started
        steps       INTEGER NOT NULL,
        step_times  TEXT    NOT NULL DEFAULT '[]', -- JSON [[name, seconds or null], ...] in step order
        cache_hit   INTEGER,                       -- NULL: no cache restore was attempted
        PRIMARY KEY (finished_at, job_id)
    ) WITHOUT ROWID;
    CREATE TRIGGER job_metrics_on_finish AFTER UPDATE OF state ON jobs
    WHEN NEW.state NOT IN ('queued', 'running') AND OLD.state IN ('queued', 'running')
    BEGIN
        INSERT OR REPLACE INTO job_metrics (finished_at, job_id, state, duration, steps, step_times, cache_hit)
        SELECT coalesce(NEW.finished_at, julianday('now') * 86400 - 210866760000), NEW.id, NEW.state,
               NEW.finished_at - NEW.started_at, count(*), json_group_array(json_array(name, finished_at - started_at)),
               NEW.cache_hit
        FROM (SELECT name, started_at, finished_at FROM steps WHERE job_id = NEW.id ORDER BY idx);
    END;
    """,
)

_JOB_COLUMNS = (
    "id, repo, ref, sha, event, priority, concurrency_group, fork, pr_number, base_ref, pipeline, env, meta,"
    " state, attempts, runner_id, lease_expires, cancel_requested, queued_at, started_at, finished_at, error,"
    " cache_hit, seq"
)

_COL = {name.strip(): i for i, name in enumerate(_JOB_COLUMNS.split(","))}  # position in a job row

# SQLite uses a partial index only for a query that repeats the index's WHERE term, hence this in
# every query on queued or running jobs. INDEXED BY: the planner has no statistics to prefer it on.
_ACTIVE = "state IN ('queued', 'running')"

_ENQUEUE = """
INSERT INTO jobs (repo, ref, sha, event, priority, concurrency_group, fork, pr_number, base_ref,
                  pipeline, env, meta, queued_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

# One statement picks and takes the job, so two claimers can never take the same one; BEGIN IMMEDIATE
# around it makes the max_concurrent count and the group check see every other process's claims.
_CLAIM = f"""
UPDATE jobs
SET state = 'running', attempts = attempts + 1, runner_id = :runner, lease_expires = :now + :lease, started_at = :now
WHERE id = (
        SELECT q.id FROM jobs AS q INDEXED BY jobs_active
        WHERE q.{_ACTIVE} AND q.state = 'queued'
          AND (q.concurrency_group IS NULL OR NOT EXISTS (
                SELECT 1 FROM jobs AS r INDEXED BY jobs_active
                WHERE r.{_ACTIVE} AND r.state = 'running' AND r.concurrency_group = q.concurrency_group))
        ORDER BY q.priority DESC, q.seq, q.id
        LIMIT 1)
  AND (SELECT count(*) FROM jobs INDEXED BY jobs_active WHERE {_ACTIVE} AND state = 'running') < :max
RETURNING {_JOB_COLUMNS}
"""

_HEARTBEAT = """
UPDATE jobs SET lease_expires = :now + :lease
WHERE id = :id AND state = 'running' AND runner_id = :runner
"""

_COMPLETE = """
UPDATE jobs SET state = :state, error = :error, finished_at = :now, lease_expires = NULL
WHERE id = :id
  AND (state = 'running' AND (:runner IS NULL OR runner_id = :runner) OR state = 'queued' AND :runner IS NULL)
"""

# An infrastructure fault: retry at the front of the job's priority while attempts remain, else `error`.
# A job whose cancel was requested is not retried: it ends `cancelled`.
_REQUEUE = f"""
UPDATE jobs
SET state = CASE WHEN cancel_requested THEN 'cancelled' WHEN attempts <= :max_retries THEN 'queued' ELSE 'error' END,
    seq = coalesce((SELECT min(q.seq) FROM jobs AS q INDEXED BY jobs_active
                  WHERE q.{_ACTIVE} AND q.state = 'queued' AND q.priority = jobs.priority), 0) - 1,
    runner_id = CASE WHEN cancel_requested OR attempts > :max_retries THEN runner_id END,
    finished_at = CASE WHEN cancel_requested OR attempts > :max_retries THEN :now END,
    lease_expires = NULL,
    error = :error
WHERE id = :id AND state = 'running' AND (:runner IS NULL OR runner_id = :runner)
RETURNING state
"""

_EXPIRED = f"""
SELECT id FROM jobs INDEXED BY jobs_active WHERE {_ACTIVE} AND state = 'running' AND lease_expires <= ? ORDER BY id DESC
"""

# A queued job is cancelled at once; a running one is flagged and its runner stops it.
_CANCEL = f"""
UPDATE jobs
SET state = CASE state WHEN 'queued' THEN 'cancelled' ELSE state END,
    finished_at = CASE state WHEN 'queued' THEN :now ELSE finished_at END,
    cancel_requested = 1
WHERE {_ACTIVE} AND {{where}}
RETURNING id, state
"""

_SUPERSEDED = "concurrency_group = :group AND id < :before AND NOT cancel_requested"
_DELIVERY_JOBS = "SELECT job_ids FROM deliveries WHERE forge = ? AND delivery_id = ?"
_RECORD_DELIVERY = "INSERT INTO deliveries (forge, delivery_id, job_ids, received_at) VALUES (?, ?, ?, ?)"
_PRUNE_DELIVERIES = "DELETE FROM deliveries WHERE received_at < ?"
# Forges redeliver for a few days (GitHub: 3); a delivery older than this is answered as a new one.
DELIVERY_MEMORY = 7 * 86400.0
PRUNE_EVERY = 64  # deliveries between two prunings of the deliveries table

_SET_PRIORITY = """
UPDATE jobs SET priority = :priority, seq = CASE WHEN priority = :priority THEN seq ELSE 0 END
WHERE id = :id AND state = 'queued'
"""

_START_STEP = """
INSERT INTO steps (job_id, idx, name, state, started_at)
SELECT id, :idx, :name, 'running', :now FROM jobs WHERE id = :id AND state = 'running'
ON CONFLICT (job_id, idx) DO UPDATE
SET name = excluded.name, state = 'running', exit_code = NULL, started_at = excluded.started_at, finished_at = NULL
"""

_FINISH_STEP = """
UPDATE steps SET state = :state, exit_code = :exit_code, finished_at = :now
WHERE job_id = :id AND idx = :idx AND state = 'running'
  AND EXISTS (SELECT 1 FROM jobs WHERE id = :id AND state = 'running')
"""

_SET_CACHE_HIT = "UPDATE jobs SET cache_hit = ? WHERE id = ? AND state = 'running'"
_SET_SHA = "UPDATE jobs SET sha = ? WHERE id = ? AND sha IS NULL"
_RESET_STEPS = "DELETE FROM steps WHERE job_id = ?"
_STATE_OF = "SELECT state, runner_id FROM jobs WHERE id = ?"
_GET = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?"
_STEPS = "SELECT idx, name, state, exit_code, started_at, finished_at FROM steps WHERE job_id = ? ORDER BY idx"
_RUNNING = f"SELECT {_JOB_COLUMNS} FROM jobs INDEXED BY jobs_active WHERE {_ACTIVE} AND state = 'running' ORDER BY id"
_COUNTS = "SELECT state, count(*) FROM jobs GROUP BY state"
# Never the newest job: without AUTOINCREMENT (a third page written per enqueue) SQLite gives a new row
# the highest id + 1, so deleting the newest would hand its id out again, and job ids are public.
_DELETE_FINISHED = """
DELETE FROM jobs WHERE state NOT IN ('queued', 'running') AND finished_at < ? AND id < (SELECT max(id) FROM jobs)
"""

_ACTIVE_COUNTS = f"SELECT state, count(*) FROM jobs INDEXED BY jobs_active WHERE {_ACTIVE} GROUP BY state"
_IN_RANGE = "finished_at >= :since AND finished_at < :until"
_TERMINAL_STATES = tuple(state.value for state in JobState if state.is_terminal)
# One pass over the range gives the chart's slices, and the totals are their sums: a week of a busy server is
# 100,000 rows, and each extra pass over them costs more than the whole page otherwise does.
_METRIC_BUCKETS = f"""
SELECT CAST((finished_at - :since) / :width AS INTEGER),
       {", ".join(f"sum(state = '{state}')" for state in _TERMINAL_STATES)},
       total(duration), max(duration), count(duration), sum(cache_hit = 1), count(cache_hit)
FROM job_metrics WHERE {_IN_RANGE} GROUP BY 1
"""
_METRIC_P95 = f"""
SELECT duration FROM job_metrics WHERE {_IN_RANGE} AND duration IS NOT NULL ORDER BY duration DESC
LIMIT 1 OFFSET :offset
"""
_METRIC_ROWS = f"""
SELECT finished_at, job_id, state, duration, steps, step_times, cache_hit FROM job_metrics WHERE {_IN_RANGE}
ORDER BY finished_at DESC, job_id DESC LIMIT :limit
"""

Order = Literal["newest", "dispatch"]


@dataclass(frozen=True)
class NewDelivery:
    """A forge delivery to record, with the jobs it makes (Queue.enqueue_deliveries)."""

    forge: str
    delivery_id: str
    specs: tuple[JobSpec, ...]
    supersede: bool = False  # each job cancels the older unfinished jobs of its concurrency group


@dataclass(frozen=True)
class Delivery:
    """What recording a forge delivery did: the jobs it made, and the superseded jobs it cancelled."""

    job_ids: tuple[int, ...]
    redelivery: bool = False  # the (forge, delivery id) was seen before: job_ids are the jobs it made then
    cancelled: tuple[int, ...] = ()  # superseded queued jobs, cancelled now
    stopping: tuple[int, ...] = ()  # superseded running jobs, flagged for their runner to stop


class Queue:
    """The job queue on one SQLite file; safe to share between threads, and between processes via the file."""

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
        # One connection behind a lock: sqlite3 connections are not safe for concurrent use, and the
        # queue's transactions are short enough that a second connection per thread would buy nothing.
        self._lock = threading.Lock()
        try:
            # Autocommit (isolation_level=None): transactions are exactly the explicit BEGINs below.
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
        except BaseException:
            self._conn.close()
            raise

    # -- plumbing ------------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """One transaction. IMMEDIATE takes the write lock up front, so a writer waits its turn (busy_timeout)
        instead of failing to upgrade a read lock; plain BEGIN gives readers one consistent snapshot."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute(begin)
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise QueueError(f"queue database {self.path}: {exc}") from exc

    def _migrate(self) -> None:
        with self._transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise QueueError(
                    f"{self.path} has schema version {version}, newer than this forgeci knows ({len(MIGRATIONS)})"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                # Statement by statement rather than executescript, which would commit our transaction
                # and let two processes opening a new file both run the same migration.
                for statement in _statements(script):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")

    def _refuse(self, conn: sqlite3.Connection, job_id: int, action: str, runner_id: str | None = None) -> QueueError:
        """Why a guarded statement changed nothing: the job is missing, or in the wrong state or hands."""
        row = conn.execute(_STATE_OF, (job_id,)).fetchone()
        if row is None:
            return JobNotFound(job_id)
        state, holder = row
        if runner_id is not None and state == JobState.running and holder != runner_id:
            return InvalidTransition(f"cannot {action} job {job_id}: runner {holder!r} holds it, not {runner_id!r}")
        return InvalidTransition(f"cannot {action} job {job_id}: it is {state}")

    # -- producers -----------------------------------------------------------------------------------

    def enqueue(self, spec: JobSpec) -> int:
        """Add a job; it runs after every job of higher priority and every older job of its priority."""
        pipeline = None if spec.pipeline is None else _json(spec.pipeline, "pipeline")
        with self._transaction() as conn:
            cur = conn.execute(
                _ENQUEUE,
                (spec.repo, spec.ref, spec.sha, spec.event, spec.priority, spec.concurrency_group, spec.fork,
                 spec.pr_number, spec.base_ref, pipeline, _json(spec.env, "env"), _json(spec.meta, "meta"),
                 self._clock()),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def set_priority(self, job_id: int, priority: int) -> None:
        """Change a queued job's priority; it takes its FIFO place in the new priority."""
        if not valid_priority(priority):
            raise _bad("priority", f"an integer {MIN_PRIORITY}..{MAX_PRIORITY}", priority)
        with self._transaction() as conn:
            if conn.execute(_SET_PRIORITY, {"id": job_id, "priority": priority}).rowcount == 0:
                raise self._refuse(conn, job_id, "change the priority of")

    def cancel(self, job_id: int) -> JobState:
        """Cancel a job: queued -> cancelled now (returned); running -> flagged, returns running."""
        with self._transaction() as conn:
            rows = conn.execute(_CANCEL.format(where="id = :id"), {"id": job_id, "now": self._clock()}).fetchall()
            if not rows:
                raise self._refuse(conn, job_id, "cancel")
            return JobState(rows[0][1])

    def cancel_superseded(self, group: str, before_job_id: int) -> list[int]:
        """Cancel (as cancel does) every unfinished job of the group older than before_job_id; returns their ids."""
        where = "concurrency_group = :group AND id < :before AND NOT cancel_requested"
        with self._transaction() as conn:
            rows = conn.execute(
                _CANCEL.format(where=where), {"group": group, "before": before_job_id, "now": self._clock()}
            ).fetchall()
        return sorted(row[0] for row in rows)

    def enqueue_delivery(
        self, forge: str, delivery_id: str, specs: Sequence[JobSpec], *, supersede: bool = False
    ) -> Delivery:
        """Record a forge delivery and enqueue its jobs in one transaction (all or nothing).

        A redelivery of the same (forge, delivery_id) enqueues nothing and returns the jobs it made the first
        time. With `supersede`, each new job cancels (as cancel does) the older unfinished jobs of its
        concurrency group, in the same transaction.
        """
        return self.enqueue_deliveries([NewDelivery(forge, delivery_id, tuple(specs), supersede)])[0]

    def enqueue_deliveries(self, deliveries: Sequence[NewDelivery]) -> list[Delivery]:
        """enqueue_delivery for several deliveries, in order, in one transaction (a burst shares one commit)."""
        rows = [
            [(spec.repo, spec.ref, spec.sha, spec.event, spec.priority, spec.concurrency_group, spec.fork,
              spec.pr_number, spec.base_ref, None if spec.pipeline is None else _json(spec.pipeline, "pipeline"),
              _json(spec.env, "env"), _json(spec.meta, "meta"))
             for spec in delivery.specs]
            for delivery in deliveries
        ]
        results: list[Delivery] = []
        with self._transaction() as conn:
            now = self._clock()
            for delivery, job_rows in zip(deliveries, rows):
                results.append(self._record_delivery(conn, delivery, job_rows, now))
            if any(r.job_ids and r.job_ids[0] % PRUNE_EVERY == 0 for r in results if not r.redelivery):
                conn.execute(_PRUNE_DELIVERIES, (now - DELIVERY_MEMORY,))  # now and then keeps the table small
        return results

    @staticmethod
    def _record_delivery(conn: sqlite3.Connection, delivery: NewDelivery, rows: list[tuple[Any, ...]],
                         now: float) -> Delivery:
        seen = conn.execute(_DELIVERY_JOBS, (delivery.forge, delivery.delivery_id)).fetchone()
        if seen is not None:
            return Delivery(tuple(json.loads(seen[0])), redelivery=True)
        job_ids: list[int] = [conn.execute(_ENQUEUE, (*row, now)).lastrowid for row in rows]  # type: ignore[misc]
        cancelled: list[int] = []
        stopping: list[int] = []
        for spec, job_id in zip(delivery.specs, job_ids):
            if delivery.supersede and spec.concurrency_group is not None:
                params = {"group": spec.concurrency_group, "before": job_id, "now": now}
                for old_id, state in conn.execute(_CANCEL.format(where=_SUPERSEDED), params).fetchall():
                    (cancelled if state == JobState.cancelled else stopping).append(old_id)
        conn.execute(_RECORD_DELIVERY, (delivery.forge, delivery.delivery_id, json.dumps(job_ids), now))
        return Delivery(tuple(job_ids), False, tuple(sorted(cancelled)), tuple(sorted(stopping)))

    # -- runners -------------------------------------------------------------------------------------

    def claim(self, runner_id: str, lease_seconds: float) -> Job | None:
        """Take the next runnable job (None if none, or max_concurrent jobs already run) under a lease."""
        with self._transaction() as conn:
            params = {"runner": runner_id, "lease": lease_seconds, "now": self._clock(), "max": self.max_concurrent}
            rows = conn.execute(_CLAIM, params).fetchall()
            if not rows:
                return None
            # A retried job still holds the steps of its previous attempt until the runner resets them.
            steps = self._steps(conn, rows[0][0]) if rows[0][_COL["attempts"]] > 1 else ()
        return _job(rows[0], steps)

    def heartbeat(self, job_id: int, runner_id: str, lease_seconds: float) -> bool:
        """Extend the lease; False means the job is no longer this runner's to run, and it must stop."""
        with self._transaction() as conn:
            params = {"id": job_id, "runner": runner_id, "lease": lease_seconds, "now": self._clock()}
            return conn.execute(_HEARTBEAT, params).rowcount == 1

    def is_cancel_requested(self, job_id: int) -> bool:
        with self._transaction("BEGIN") as conn:
            row = conn.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return bool(row[0])

    def complete(
        self, job_id: int, state: JobState | str, error: str | None = None, runner_id: str | None = None
    ) -> None:
        """Finish a job in a terminal state; with runner_id, only if it is still that runner's running job."""
        state = JobState(state)
        if not state.is_terminal:
            raise ValueError(f"complete() needs a terminal state, not {state}")
        with self._transaction() as conn:
            params = {"id": job_id, "state": state, "error": error, "runner": runner_id, "now": self._clock()}
            if conn.execute(_COMPLETE, params).rowcount == 0:
                raise self._refuse(conn, job_id, f"complete as {state}", runner_id)

    def fail_infra(self, job_id: int, error: str, runner_id: str | None = None) -> JobState:
        """An infrastructure fault: requeue at the front while retries remain, else error; returns the new state."""
        with self._transaction() as conn:
            state = self._requeue(conn, job_id, error, runner_id)
            if state is None:
                raise self._refuse(conn, job_id, "fail", runner_id)
            return state

    def expire_leases(self) -> list[int]:
        """Treat every running job whose lease has expired as an infrastructure fault; returns their ids."""
        with self._transaction() as conn:
            expired = [row[0] for row in conn.execute(_EXPIRED, (self._clock(),)).fetchall()]
            # Newest first, each to the front: the oldest expired job ends up first in line.
            for job_id in expired:
                self._requeue(conn, job_id, "lease expired", None)
        return sorted(expired)

    def _requeue(self, conn: sqlite3.Connection, job_id: int, error: str, runner_id: str | None) -> JobState | None:
        params = {"id": job_id, "error": error, "runner": runner_id, "now": self._clock(),
                  "max_retries": self.max_retries}
        rows = conn.execute(_REQUEUE, params).fetchall()
        return JobState(rows[0][0]) if rows else None

    # -- steps ---------------------------------------------------------------------------------------

    def start_step(self, job_id: int, index: int, name: str) -> None:
        with self._transaction() as conn:
            params = {"id": job_id, "idx": index, "name": name, "now": self._clock()}
            if conn.execute(_START_STEP, params).rowcount == 0:
                raise self._refuse(conn, job_id, f"start step {index} of")

    def finish_step(self, job_id: int, index: int, state: StepState | str, exit_code: int | None) -> None:
        state = StepState(state)
        if state not in STEP_ENDS:
            raise ValueError(f"finish_step() needs a terminal state, not {state}")
        with self._transaction() as conn:
            params = {"id": job_id, "idx": index, "state": state, "exit_code": exit_code, "now": self._clock()}
            if conn.execute(_FINISH_STEP, params).rowcount == 0:
                row = conn.execute(_STATE_OF, (job_id,)).fetchone()
                if row is not None and row[0] == JobState.running:
                    raise InvalidTransition(f"step {index} of job {job_id} is not running")
                raise self._refuse(conn, job_id, f"finish step {index} of")

    def set_cache_hit(self, job_id: int, hit: bool) -> None:
        with self._transaction() as conn:
            if conn.execute(_SET_CACHE_HIT, (hit, job_id)).rowcount == 0:
                raise self._refuse(conn, job_id, "record the cache result of")

    def set_sha(self, job_id: int, sha: str) -> bool:
        """Record the commit a job submitted without one checked out (its ref's tip then); False if it had one."""
        with self._transaction() as conn:
            return conn.execute(_SET_SHA, (sha, job_id)).rowcount == 1

    def reset_steps(self, job_id: int) -> None:
        """Forget the steps of a previous attempt, when a retry starts."""
        with self._transaction() as conn:
            row = conn.execute(_STATE_OF, (job_id,)).fetchone()
            if row is None or row[0] != JobState.running:
                raise self._refuse(conn, job_id, "reset the steps of")
            conn.execute(_RESET_STEPS, (job_id,))

    # -- reading -------------------------------------------------------------------------------------

    def get(self, job_id: int) -> Job:
        with self._transaction("BEGIN") as conn:
            row = conn.execute(_GET, (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            return _job(row, self._steps(conn, job_id))

    def list_jobs(
        self,
        *,
        status: str | None = None,
        repo: str | None = None,
        order: Order = "newest",
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Job], str | None]:
        """One page of jobs (without their steps) and the cursor of the next page, None on the last.

        "newest" is id descending; "dispatch" lists queued jobs in the order claim takes them.
        """
        if order not in ("newest", "dispatch"):
            raise _bad("order", "newest or dispatch", order)
        if status is not None and status not in JobState.__members__:
            raise _bad("status", "a job state", status)
        if order == "dispatch" and status not in (None, JobState.queued):
            raise _bad("status", "queued (or none) with order=dispatch", status)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise _bad("limit", "an integer 1..1000", limit)
        where: list[str] = []
        params: list[Any] = []
        after = _decode_cursor(cursor, order) if cursor is not None else None
        if order == "dispatch":
            where += [_ACTIVE, "state = 'queued'"]
            if after is not None:
                priority, seq, job_id = after
                where.append("(priority < ? OR priority = ? AND (seq > ? OR seq = ? AND id > ?))")
                params += [priority, priority, seq, seq, job_id]
            order_by = "priority DESC, seq, id"
        else:
            if status is not None:
                where.append("state = ?")
                params.append(status)
            if after is not None:
                where.append("id < ?")
                params.append(after[0])
            order_by = "id DESC"
        if repo is not None:
            where.append("repo = ?")
            params.append(repo)
        index = "INDEXED BY jobs_active" if order == "dispatch" else ""
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs {index} {'WHERE ' + ' AND '.join(where) if where else ''}"
        sql += f" ORDER BY {order_by} LIMIT ?"
        with self._transaction("BEGIN") as conn:
            rows = conn.execute(sql, [*params, limit + 1]).fetchall()
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            last = rows[-1]
            key = ("priority", "seq", "id") if order == "dispatch" else ("id",)
            next_cursor = _encode_cursor(order, [last[_COL[column]] for column in key])
        return [_job(row) for row in rows], next_cursor

    def counts(self) -> dict[JobState, int]:
        """How many jobs are in each state (every state present, 0 when none)."""
        with self._transaction("BEGIN") as conn:
            found = dict(conn.execute(_COUNTS).fetchall())
        return {state: found.get(state.value, 0) for state in JobState}

    def running_jobs(self) -> list[Job]:
        """The running jobs (without their steps), oldest first."""
        with self._transaction("BEGIN") as conn:
            return [_job(row) for row in conn.execute(_RUNNING).fetchall()]

    def delete_finished_before(self, ts: float) -> int:
        """Retention: delete terminal jobs (and their steps) finished before ts; returns how many."""
        with self._transaction() as conn:
            return conn.execute(_DELETE_FINISHED, (ts,)).rowcount

    def delete_finished_jobs(self, ts: float) -> list[int]:
        """delete_finished_before, returning the ids deleted (maintenance removes their logs)."""
        with self._transaction() as conn:
            return sorted(row[0] for row in conn.execute(_DELETE_FINISHED + " RETURNING id", (ts,)).fetchall())

    # -- cache index and snapshots (runner.cache, runner.snapshot) ------------------------------------

    def cache_entry(self, key: str) -> CacheEntry | None:
        with self._transaction("BEGIN") as conn:
            row = conn.execute(f"SELECT {_CACHE_COLUMNS} FROM cache_entries WHERE key = ?", (key,)).fetchone()
        return _cache_entry(row) if row else None

    def cache_fallback(self, repo: str, scope: str, image: str, paths: tuple[str, ...]) -> CacheEntry | None:
        """The newest entry of repo/scope with the same image and paths (a restore-keys prefix match)."""
        sql = (f"SELECT {_CACHE_COLUMNS} FROM cache_entries WHERE repo = ? AND scope = ? AND image = ? AND paths = ?"
               " ORDER BY created_at DESC LIMIT 1")
        with self._transaction("BEGIN") as conn:
            row = conn.execute(sql, (repo, scope, image, json.dumps(list(paths)))).fetchone()
        return _cache_entry(row) if row else None

    def add_cache_entry(self, entry: CacheEntry) -> bool:
        """Index a saved cache; False (and nothing changed) when its key is already there: entries are immutable."""
        with self._transaction() as conn:
            return conn.execute(
                f"INSERT OR IGNORE INTO cache_entries ({_CACHE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (entry.key, entry.repo, entry.scope, entry.image, json.dumps(list(entry.paths)), entry.object,
                 entry.size, entry.checksum, entry.created_at, entry.last_used, entry.hits),
            ).rowcount == 1

    def touch_cache_entry(self, key: str) -> None:
        """A job restored the entry: one more hit, used now."""
        with self._transaction() as conn:
            conn.execute("UPDATE cache_entries SET hits = hits + 1, last_used = ? WHERE key = ?", (self._clock(), key))

    def delete_cache_entry(self, key: str) -> CacheEntry | None:
        """Remove an entry from the index; returns it (its object is the caller's to delete), None if absent."""
        with self._transaction() as conn:
            row = conn.execute(f"DELETE FROM cache_entries WHERE key = ? RETURNING {_CACHE_COLUMNS}", (key,)).fetchone()
        return _cache_entry(row) if row else None

    def cache_entries(self, *, repo: str | None = None, limit: int = 1000) -> list[CacheEntry]:
        """Entries, most recently used first."""
        where, params = ("WHERE repo = ?", [repo]) if repo is not None else ("", [])
        sql = f"SELECT {_CACHE_COLUMNS} FROM cache_entries {where} ORDER BY last_used DESC, key LIMIT ?"
        with self._transaction("BEGIN") as conn:
            return [_cache_entry(row) for row in conn.execute(sql, [*params, limit]).fetchall()]

    def cache_stats(self) -> dict[str, int]:
        """Totals over the whole index in one query: entries, bytes, hits."""
        with self._transaction("BEGIN") as conn:
            count, size, hits = conn.execute(
                "SELECT count(*), coalesce(sum(size), 0), coalesce(sum(hits), 0) FROM cache_entries").fetchone()
        return {"entries": count, "bytes": size, "hits": hits}

    def cache_unused_since(self, ts: float) -> list[CacheEntry]:
        """Entries last used before ts (pruning)."""
        with self._transaction("BEGIN") as conn:
            rows = conn.execute(f"SELECT {_CACHE_COLUMNS} FROM cache_entries WHERE last_used < ? ORDER BY last_used",
                                (ts,)).fetchall()
        return [_cache_entry(row) for row in rows]

    def put_snapshot(self, record: SnapshotRecord) -> SnapshotRecord | None:
        """Record a job's snapshot; returns the one it replaces (an earlier attempt's), whose object is to delete."""
        with self._transaction() as conn:
            old = conn.execute(f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots WHERE job_id = ?", (record.job_id,)).fetchone()
            conn.execute(
                f"INSERT OR REPLACE INTO snapshots ({_SNAPSHOT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.job_id, record.key, record.sha, record.image, record.state, record.failed_step,
                 record.failed_step_name, record.size, record.checksum, record.created_at),
            )
        return _snapshot(old) if old and old[1] != record.key else None

    def snapshot(self, job_id: int) -> SnapshotRecord | None:
        with self._transaction("BEGIN") as conn:
            row = conn.execute(f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots WHERE job_id = ?", (job_id,)).fetchone()
        return _snapshot(row) if row else None

    def snapshots_before(self, ts: float) -> list[SnapshotRecord]:
        with self._transaction("BEGIN") as conn:
            rows = conn.execute(f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots WHERE created_at < ? ORDER BY created_at",
                                (ts,)).fetchall()
        return [_snapshot(row) for row in rows]

    def delete_snapshot(self, job_id: int, key: str | None = None) -> bool:
        """Forget a job's snapshot (only if it is still `key`, when given); True when a row went."""
        with self._transaction() as conn:
            return conn.execute("DELETE FROM snapshots WHERE job_id = ? AND (? IS NULL OR key = ?)",
                                (job_id, key, key)).rowcount == 1

    def stored_objects(self) -> set[str]:
        """Every store key the index refers to (maintenance deletes the others)."""
        with self._transaction("BEGIN") as conn:
            rows = conn.execute("SELECT object FROM cache_entries UNION ALL SELECT key FROM snapshots").fetchall()
        return {row[0] for row in rows}

    # -- metrics (bot.metrics, the dashboard) --------------------------------------------------------

    def state_of(self, job_id: int) -> JobState:
        """The job's state alone: cheaper than get() for a follower polling for the end."""
        with self._transaction("BEGIN") as conn:
            row = conn.execute(_STATE_OF, (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return JobState(row[0])

    def active_counts(self) -> tuple[int, int]:
        """(queued, running) from the small active-jobs index, unlike counts() which reads every job."""
        with self._transaction("BEGIN") as conn:
            found = dict(conn.execute(_ACTIVE_COUNTS).fetchall())
        return found.get("queued", 0), found.get("running", 0)

    def range_stats(self, since: float, until: float, buckets: int = 24) -> RangeStats:
        """Totals, per-state counts, average and p95 duration, cache hits of the jobs finished in [since, until)."""
        if not until > since or buckets < 1:
            raise ValueError("range_stats needs since < until and at least one bucket")
        width = (until - since) / buckets
        span = {"since": since, "until": until}
        with self._transaction("BEGIN") as conn:
            rows = conn.execute(_METRIC_BUCKETS, {**span, "width": width}).fetchall()
            timed = sum(row[-3] for row in rows)
            p95 = None
            if timed:
                # Nearest rank, counted from the top: the sorter then keeps 5% of the rows, not 95%.
                offset = timed - math.ceil(0.95 * timed)
                p95 = conn.execute(_METRIC_P95, {**span, "offset": offset}).fetchone()[0]
        per_bucket: dict[int, list[Any]] = {}
        for index, *counts, total, longest, known, hits, lookups in rows:
            index = min(index, buckets - 1)  # float rounding at the upper edge
            merged = per_bucket.setdefault(index, [[0] * len(counts), 0.0, None, 0, 0, 0])
            merged[0] = [a + b for a, b in zip(merged[0], counts, strict=True)]
            merged[1] += total
            merged[2] = longest if merged[2] is None else max(merged[2], longest or 0.0)
            merged[3] += known
            merged[4] += hits or 0
            merged[5] += lookups
        slices = []
        states = dict.fromkeys(_TERMINAL_STATES, 0)
        duration_sum = 0.0
        timed_total = hits_total = lookups_total = 0
        for index in range(buckets):
            counts, total, longest, known, hits, lookups = per_bucket.get(index, [[], 0.0, None, 0, 0, 0])
            by_state = {state: n for state, n in zip(_TERMINAL_STATES, counts, strict=False) if n}
            for state, n in by_state.items():
                states[state] += n
            duration_sum += total
            timed_total += known
            hits_total += hits
            lookups_total += lookups
            slices.append(BucketStats(since + index * width, by_state, total / known if known else None,
                                      longest if known else None))
        return RangeStats(
            since=since, until=until, states=states, avg_duration=duration_sum / timed_total if timed_total else None,
            p95_duration=p95, cache_hits=hits_total, cache_lookups=lookups_total, bucket_seconds=width,
            buckets=tuple(slices),
        )

    def job_metrics(self, since: float, until: float, limit: int = 1000) -> list[JobMetric]:
        """The per-job metrics rows of jobs finished in [since, until), newest first."""
        with self._transaction("BEGIN") as conn:
            rows = conn.execute(_METRIC_ROWS, {"since": since, "until": until, "limit": limit}).fetchall()
        return [
            JobMetric(job_id, finished_at, JobState(state), duration, steps,
                      tuple((name, seconds) for name, seconds in json.loads(step_times)),
                      None if cache_hit is None else bool(cache_hit))
            for finished_at, job_id, state, duration, steps, step_times, cache_hit in rows
        ]

    def delete_metrics_before(self, ts: float) -> int:
        """Retention of the metrics rows (they outlive their jobs); returns how many were deleted."""
        with self._transaction() as conn:
            return conn.execute("DELETE FROM job_metrics WHERE finished_at < ?", (ts,)).rowcount

    @staticmethod
    def _steps(conn: sqlite3.Connection, job_id: int) -> tuple[StepRecord, ...]:
        return tuple(
            StepRecord(idx, name, StepState(state), code, started, finished,
                       None if started is None or finished is None else finished - started)
            for idx, name, state, code, started, finished in conn.execute(_STEPS, (job_id,)).fetchall()
        )


def _job(row: tuple[Any, ...], steps: tuple[StepRecord, ...] = ()) -> Job:
    (job_id, repo, ref, sha, event, priority, group, fork, pr_number, base_ref, pipeline, env, meta,
     state, attempts, runner_id, lease_expires, cancel_requested, queued_at, started_at, finished_at, error,
     cache_hit, _seq) = row
    spec = JobSpec._stored(
        repo=repo, ref=ref, sha=sha, event=event, priority=priority, concurrency_group=group, fork=bool(fork),
        pr_number=pr_number, base_ref=base_ref, pipeline=None if pipeline is None else json.loads(pipeline),
        env=json.loads(env) if env != "{}" else {}, meta=json.loads(meta) if meta != "{}" else {},
    )
    return Job(
        id=job_id, spec=spec, state=JobState(state), attempts=attempts, runner_id=runner_id,
        lease_expires=lease_expires, cancel_requested=bool(cancel_requested), queued_at=queued_at,
        started_at=started_at, finished_at=finished_at, error=error,
        cache_hit=None if cache_hit is None else bool(cache_hit), steps=steps,
    )


_CACHE_COLUMNS = "key, repo, scope, image, paths, object, size, checksum, created_at, last_used, hits"
_SNAPSHOT_COLUMNS = "job_id, key, sha, image, state, failed_step, failed_step_name, size, checksum, created_at"


def _cache_entry(row: tuple[Any, ...]) -> CacheEntry:
    key, repo, scope, image, paths, obj, size, checksum, created_at, last_used, hits = row
    return CacheEntry(key, repo, scope, image, tuple(json.loads(paths)), obj, size, checksum, created_at, last_used,
                      hits)


def _snapshot(row: tuple[Any, ...]) -> SnapshotRecord:
    job_id, key, sha, image, state, failed_step, failed_name, size, checksum, created_at = row
    return SnapshotRecord(job_id, key, sha, image, JobState(state), failed_step, failed_name, size, checksum,
                          created_at)


def _json(value: Any, key: str) -> str:
    if not value:
        return "{}"
    try:
        return json.dumps(value)  # default arguments: json's cached encoder, twice as fast as a new one
    except (TypeError, ValueError) as exc:
        raise ConfigError(ConfigIssue("job spec", key, f"not JSON-serialisable: {exc}")) from exc


def _bad(key: str, expected: str, got: object) -> ConfigError:
    return ConfigError(ConfigIssue("request", key, f"expected {expected}, got {got!r}"))


def _encode_cursor(order: str, key: list[int]) -> str:
    return base64.urlsafe_b64encode(json.dumps([order, *key]).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, order: str) -> list[int]:
    """The sort key of the last row of the previous page; a cursor of another order or a forged one is refused."""
    try:
        tag, *key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError) as exc:
        raise _bad("cursor", "a cursor from a previous page", cursor) from exc
    if tag != order or len(key) != (3 if order == "dispatch" else 1) or not all(type(k) is int for k in key):
        raise _bad("cursor", f"a cursor from a previous order={order} page", cursor)
    return key


def _statements(script: str) -> Iterator[str]:
    """Split a migration script into statements (a ';' inside a string or trigger body does not end one)."""
    statement = ""
    for part in script.split(";"):
        statement += part + ";"
        if sqlite3.complete_statement(statement):
            if statement.strip(" \t\n;"):
                yield statement
            statement = ""
    if statement.strip(" \t\n;"):
        raise ValueError(f"incomplete SQL statement in a migration: {statement!r}")
