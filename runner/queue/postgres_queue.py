"""The queue on PostgreSQL: the same Queue (every query mixin), its transactions on a PostgresDatabase.

Statements run translated (runner.queue.dialect); the few whose PostgreSQL form is not a translation are in
OVERRIDES, keyed by the SQLite statement itself, so a changed statement can never pick up a stale twin. `forgeci serve`
opens it for `[queue] url` (runner.backend). A transaction that wrote `jobs` NOTIFYs WAKE_CHANNEL at its commit;
the server's LISTEN thread (runner.wakeups) wakes its workers at another process's commits.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from runner.models import Job, JobState, PipelineState, StepRecord
from runner.queue import Queue
from runner.queue import jobs as _jobs
from runner.queue import pipelines as _pipelines
from runner.queue.cluster import STATUS_CHANNEL
from runner.queue.dialect import postgres
from runner.queue.labels import label_json
from runner.queue.pipelines import Settlement
from runner.queue.postgres import STATUS_FLAG, WAKE_CHANNEL, Listener, PostgresConnection, PostgresDatabase

# Claims: SQLite's BEGIN IMMEDIATE serializes them, so max_concurrent, the concurrency groups and the quotas
# (counts over other rows, which no row lock guards) hold. On PostgreSQL a transaction-level advisory lock does the
# same for claimers only, taken in the message of the claim transaction's BEGIN, before any of its reads (the quota
# filter's counts too); FOR UPDATE SKIP LOCKED on the picked row lets a claim pass a job another writer (a cancel, a
# priority change) holds instead of waiting for it, and the claim sees every claim committed before it (READ
# COMMITTED: each statement's snapshot is taken after the lock).
#
# The lock is held until the claim commits, so claimers queue behind each other's COMMIT. Four things keep that
# short (bench/queue_postgres.py measures them):
# - Without quotas to count first, a claim is one call of a server-side function (forgeci_claim, below): the lock
#   is held for the server's work alone, never across a round trip (nor a wait for this process's GIL); the pick,
#   the take and the pipeline's start are one statement (_CLAIM_AND_START). With quotas, JobQueries.claim runs as
#   on SQLite, the lock taken in its BEGIN.
# - Its statement keeps its plan on the server (planned once per connection; the generic plan, forced for it
#   alone — its parameters choose no other plan — costs 0.02 ms to bind against 0.4 ms to plan), as does the
#   completion's.
# - Its counts of running jobs scan jobs_active by index, not by bitmap (enable_bitmapscan off for the claim's
#   transaction, where its plan is made): an index scan marks the entries of dead rows (every claim and end leaves
#   one until VACUUM comes) and skips them thereafter, where a bitmap scan visits each of them at every claim.
# - A claim alone commits with synchronous_commit = off, so it waits for no WAL flush. PostgreSQL keeps it
#   crash-consistent: it is in the WAL before any later commit, and every synchronous commit flushes the WAL up to
#   itself, so the job's first durable write — a heartbeat, a step, its end — or anyone else's makes the claim
#   durable too. Only a crash of PostgreSQL or its machine (or a failover) within 3 x wal_writer_delay (600 ms by
#   default) of an acknowledged claim, before any synchronous commit, loses it: the job is queued again as it was
#   (attempts unchanged), as if its lease had expired at once; its runner's next heartbeat answers False and stops
#   it, its end is refused (the job is not its), and the job runs again — the at-least-once a lost lease already
#   gives (test_queue_postgres.py crashes a cluster to show it). Everything else — an enqueue (a webhook's 202), a
#   job's end, a cancel — commits synchronously.
CLAIM_LOCK = 0x666F7263
CLAIM_PRELUDE = ("set_config('synchronous_commit', 'off', true)", f"pg_advisory_xact_lock({CLAIM_LOCK})",
                 "set_config('enable_bitmapscan', 'off', true)")
_GENERIC = "set_config('plan_cache_mode', 'force_generic_plan', true)"
_PG_CLAIM = postgres(_jobs._CLAIM).replace("LIMIT 1)", "LIMIT 1 FOR UPDATE OF q SKIP LOCKED)", 1)
OVERRIDES: dict[str, str] = {_jobs._CLAIM: _PG_CLAIM}
OVERRIDES[_pipelines.PLAN_STATE] = postgres(_pipelines.PLAN_STATE) + " FOR UPDATE"  # see pipelines.PLAN_STATE
# JobQueries.claim's pick (_CLAIM, its row locked), take (_TAKE, by the picked id) and the pipeline's start
# (_PIPELINE_STARTED) as one statement of data-modifying CTEs; the last column says whether it started the pipeline.
_TAKE_PICKED = postgres(_jobs._TAKE).replace("%(id)s", "(SELECT id FROM picked)", 1).rstrip()
assert "(SELECT id FROM picked)" in _TAKE_PICKED, "jobs._TAKE no longer takes the job by :id"
# The pick needs the id alone: the take returns the row.
_PICK = _PG_CLAIM.replace(f"SELECT {_jobs._JOB_COLUMNS} FROM jobs", "SELECT id FROM jobs", 1)
assert _PICK != _PG_CLAIM, "jobs._CLAIM no longer selects the job's columns"
_CLAIM_AND_START = f"""
WITH picked AS ({_PICK}),
     taken AS ({_TAKE_PICKED}
               RETURNING {_jobs._JOB_COLUMNS}),
     started AS (UPDATE pipelines SET state = 'running', started_at = %(now)s
                 WHERE id = (SELECT pipeline_id FROM taken) AND state = 'queued' RETURNING id)
SELECT taken.*, (SELECT count(*) FROM started) FROM taken
"""
_COMPLETE = postgres(_jobs._COMPLETE).rstrip()
_COMPLETE_ALONE = _COMPLETE.replace("WHERE id = %(id)s", "WHERE id = %(id)s AND pipeline_id IS NULL", 1)
assert _COMPLETE_ALONE != _COMPLETE, "jobs._COMPLETE no longer finds the job by :id"


def _positional(statement: str, names: Sequence[str]) -> str:
    """A statement's %(name)s placeholders as a routine's positional parameters ($1 for names[0], ...)."""
    return re.sub(r"%\((\w+)\)s", lambda m: f"${list(names).index(m.group(1)) + 1}", statement).replace("%%", "%")


# A job's claim and its end as server-side routines: each call a message of one Bind and Execute (psycopg prepares
# it), one round trip and one result, the routine's statements planned once per connection; a transaction of
# statements costs the parsing of several and as many results, on both sides. They are created on each pooled
# connection, in pg_temp (for that session alone, as a PREPARE is): their SQL is this module's, built from the same
# statements as the transactions, never a stale copy an older forgeci left in the schema.
# - forgeci_claim: the claim without quotas (_CLAIM_AND_START) as a transaction of its own: CLAIM_PRELUDE's
#   settings and lock first, so each later statement's snapshot is taken after the lock (a VOLATILE function in
#   READ COMMITTED), the NOTIFYs of a claim that took a job, and the asynchronous commit when the call returns.
#   (A claim that found nothing used to NOTIFY too: every listener, this process's own, then claimed again, found
#   nothing and NOTIFYed, so idle coordinators kept claiming at the rate of a round trip.)
# - forgeci_end: the completion's UPDATE, returning the pipeline JobQueries.complete settles (in its transaction).
# - forgeci_complete: all of JobQueries.complete for a job of no pipeline (nothing to settle: the UPDATE is the
#   whole of it), committed synchronously inside the procedure; then its NOTIFYs in a second transaction with
#   synchronous_commit = off, as PostgresConnection.commit sends them (a NOTIFY holds its lock through its commit's
#   WAL flush). No EXCEPTION block around them: entering one starts a subtransaction at every completion, and it
#   could catch nothing here, as pg_notify only queues its message in memory; a full NOTIFY queue fails the commit
#   of that second transaction, when the CALL ends: the CALL then reports the error though the job's end is
#   committed (PostgreSQL's NOTIFY queue holds 8 GB by default: only a listener that stopped reading fills it). It
#   changes nothing (`done` false) for a job of a pipeline or one the guard refuses: PostgresQueue.
#   complete runs the transaction then, which settles the pipeline or says why.
_STATUS_NOTIFY_PLPGSQL = f"""
        IF current_setting('{STATUS_FLAG}', true) = 'y' THEN
            PERFORM pg_notify('{STATUS_CHANNEL}', ''), set_config('{STATUS_FLAG}', '', false);
        END IF;"""
_CLAIM_ARGS = ("runner", "now", "lease", "max", "labels")
_COMPLETE_ARGS = ("state", "error", "now", "outputs", "id", "runner")
_COMPLETE_TYPES = "text, text, float8, text, bigint, text"
ROUTINES = {  # name -> its CREATE, run once per pooled connection (PostgresDatabase)
    "forgeci_claim": f"""
CREATE FUNCTION pg_temp.forgeci_claim(text, float8, float8, bigint, text)
RETURNS TABLE ({", ".join(f"j_{name} jobs.{name}%TYPE" for name in _jobs._COL)}, started bigint)
LANGUAGE plpgsql AS $forgeci$
BEGIN
    PERFORM {", ".join(CLAIM_PRELUDE)}, {_GENERIC}, set_config('forgeci.now', $2::text, true);
    RETURN QUERY {_positional(_CLAIM_AND_START.replace("%(quota)s", "NULL::text"), _CLAIM_ARGS)};
    IF FOUND THEN  -- a slot taken (claimers elsewhere learn it); a claim that took nothing wrote nothing
        PERFORM pg_notify('{WAKE_CHANNEL}', '');
    END IF;{_STATUS_NOTIFY_PLPGSQL}
END $forgeci$""",
    "forgeci_end": f"""
CREATE FUNCTION pg_temp.forgeci_end({_COMPLETE_TYPES}) RETURNS TABLE (pipeline_id bigint)
LANGUAGE plpgsql AS $forgeci$
#variable_conflict use_column
BEGIN
    PERFORM {_GENERIC};
    RETURN QUERY WITH ended AS ({_positional(_COMPLETE, _COMPLETE_ARGS)} RETURNING pipeline_id)
        SELECT pipeline_id FROM ended;
END $forgeci$""",
    "forgeci_complete": f"""
CREATE PROCEDURE pg_temp.forgeci_complete({_COMPLETE_TYPES}, INOUT done boolean DEFAULT NULL)
LANGUAGE plpgsql AS $forgeci$
BEGIN
    PERFORM {_GENERIC}, set_config('forgeci.now', $3::text, true);
    {_positional(_COMPLETE_ALONE, _COMPLETE_ARGS)};
    done := FOUND;
    IF done THEN
        COMMIT;
        PERFORM set_config('synchronous_commit', 'off', true);
        PERFORM pg_notify('{WAKE_CHANNEL}', '');{_STATUS_NOTIFY_PLPGSQL}
    END IF;
END $forgeci$""",
}
_CALL_CLAIM = "SELECT * FROM pg_temp.forgeci_claim(%s::text, %s::float8, %s::float8, %s::bigint, %s::text)"
_CALL_COMPLETE = "CALL pg_temp.forgeci_complete(%s::text, %s::text, %s::float8, %s::text, %s::bigint, %s::text)"
_END = ("SELECT * FROM pg_temp.forgeci_end(%(state)s::text, %(error)s::text, %(now)s::float8, %(outputs)s::text, "
        "%(id)s::bigint, %(runner)s::text)")
OVERRIDES[_END] = _END  # already PostgreSQL
_STANDALONE_KEPT = 10_000  # job ids remembered as of no pipeline (a fact about a job: it never changes)


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
        self._claiming = threading.local()  # this thread's transaction is a claim's: it takes CLAIM_PRELUDE
        self._standalone: set[int] = set()  # ids of jobs claimed here that belong to no pipeline
        self._db = PostgresDatabase(url, password, max_size=pool_size, routines=ROUTINES)  # migrates
        self.path = self._db.name

    def close(self) -> None:
        self._db.close()

    def claim(self, runner_id: str, lease_seconds: float, labels: Sequence[str] | None = ()) -> Job | None:
        """JobQueries.claim, in one call of forgeci_claim when no quota limits running jobs."""
        if any(rule.max_running or rule.per_user_running for rule in self.quota_rules):
            self._claiming.on = True  # JobQueries.claim runs one transaction: that one is the claim's
            try:
                return super().claim(runner_id, lease_seconds, labels)
            finally:
                self._claiming.on = False
        rows = self._db.call(_CALL_CLAIM, (runner_id, self._clock(), lease_seconds, self.max_concurrent,
                                           label_json(labels)), routines=("forgeci_claim",))
        if not rows:
            return None
        row, started = rows[0][:-1], rows[0][-1]
        if row[_jobs._COL["pipeline_id"]] is None:
            if len(self._standalone) >= _STANDALONE_KEPT:
                self._standalone.clear()  # a hint only: a job not found here ends by the transaction
            self._standalone.add(row[0])
        # A retried job still holds the steps of its previous attempt until the runner resets them; only its
        # runner (this caller) writes them now, so reading them after the commit reads what the claim would have.
        steps: tuple[StepRecord, ...] = ()
        if row[_jobs._COL["attempts"]] > 1:
            with self._transaction("BEGIN") as conn:
                steps = self._steps(conn, row[0])
        if started:
            self._settled(Settlement(row[_jobs._COL["pipeline_id"]], state=PipelineState.running))
        return _jobs._job(row, steps)

    def complete(
        self, job_id: int, state: JobState | str, error: str | None = None, runner_id: str | None = None,
        outputs: Mapping[str, str] | None = None,
    ) -> None:
        """JobQueries.complete: one call of forgeci_complete for a job claimed here of no pipeline; otherwise (or
        when the call changed nothing) the transaction, its read of the job's pipeline in the UPDATE's RETURNING."""
        state = JobState(state)
        if not state.is_terminal:
            raise ValueError(f"complete() needs a terminal state, not {state}")
        encoded = None if outputs is None else json.dumps(dict(outputs))
        if job_id in self._standalone:
            done = self._db.call(_CALL_COMPLETE, (state.value, error, self._clock(), encoded, job_id, runner_id),
                                 routines=("forgeci_complete",))
            if done and done[0][0]:
                self._standalone.discard(job_id)
                return
        with self._transaction(routines=("forgeci_end",)) as conn:
            params = {"id": job_id, "state": state, "error": error, "runner": runner_id, "now": self._clock(),
                      "outputs": encoded}
            rows = conn.execute(_END, params).fetchall()
            if not rows:
                raise self._refuse(conn, job_id, f"complete as {state}", runner_id)
            conn.wrote_jobs = conn.wrote_states = True
            settled = None if rows[0][0] is None else self._settle(conn, rows[0][0])
        self._settled(settled)

    @contextmanager
    def _transaction(  # type: ignore[override]
        self, begin: str = "BEGIN IMMEDIATE", *, routines: Sequence[str] = (),
    ) -> Iterator[PostgresConnection]:
        prelude = CLAIM_PRELUDE if getattr(self._claiming, "on", False) else ()
        self._claiming.on = False  # the claim's one transaction; any other (none today) is as usual
        with self._db.transaction(now=self._clock(), overrides=OVERRIDES, snapshot=begin == "BEGIN",
                                  prelude=prelude, routines=routines) as conn:
            yield conn
            if conn.wrote_jobs and not conn.committed:  # delivered at commit to every LISTENer (runner.wakeups)
                conn.notify(WAKE_CHANNEL)

    def _lock_pipeline(self, conn: PostgresConnection, pipeline_id: int) -> None:  # type: ignore[override]
        """READ COMMITTED: two jobs of a pipeline ending at once would each see the other still running and leave
        the pipeline `running` for good. The row lock makes the second settle wait, and its next statement sees
        the first one's commit."""
        conn.raw.execute("SELECT 1 FROM pipelines WHERE id = %s FOR UPDATE", (pipeline_id,))

    def _migrate(self) -> None:
        """PostgresDatabase migrated at connect; the usage trigger is part of the PostgreSQL schema."""

    @property
    def conninfo(self) -> str:
        """The database's libpq connection string (with the password): for the connections of the cluster's locks
        and LISTENers (runner/queue/leader.py, runner/cluster_*.py)."""
        return self._db.conninfo

    def listener(self) -> Listener:
        """A connection LISTENing for claimable work (wake_claimers)."""
        return self._db.listener(WAKE_CHANNEL)

    def wake_claimers(self) -> None:
        with self._db.transaction() as conn:
            conn.notify(WAKE_CHANNEL)
