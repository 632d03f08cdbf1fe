"""The jobs and steps tables (migration 1): enqueue, claim under a lease, complete, requeue, cancel, read."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from runner.errors import InvalidTransition, JobNotFound, QueueError
from runner.models import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    STEP_ENDS,
    Job,
    JobSpec,
    JobState,
    PipelineState,
    StepRecord,
    StepState,
    valid_priority,
)
from runner.queue.base import QueueBase, decode_cursor, encode_cursor
from runner.queue.job_rows import COL as _COL
from runner.queue.job_rows import JOB_COLUMNS as _JOB_COLUMNS
from runner.queue.job_rows import bad_request as _bad
from runner.queue.job_rows import job_of as _job
from runner.queue.job_rows import spec_json
from runner.queue.labels import LABEL_FILTER, label_json
from runner.queue.pipelines import Settlement
from runner.queue.usage import job_scope

# SQLite uses a partial index only for a query that repeats the index's WHERE term, hence this in
# every query on queued or running jobs. INDEXED BY: the planner has no statistics to prefer it on.
_ACTIVE = "state IN ('queued', 'running')"

# ENQUEUE and CANCEL are public: deliveries.py runs them too, in a delivery's transaction.
ENQUEUE = """
INSERT INTO jobs (repo, ref, sha, event, priority, concurrency_group, fork, pr_number, base_ref,
                  pipeline, env, meta, queued_at, slug, user)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

# The claim picks the job (the row as the runner gets it) and takes it by id, in one BEGIN IMMEDIATE transaction: no
# other claimer runs between the two, and it makes the max_concurrent count and the group check see every other
# process's claims (PostgreSQL locks the picked row: postgres_queue.py). A SELECT rather than UPDATE .. RETURNING:
# RETURNING and an IN list searched through the index each build a temporary b-tree, which cost more than the claim.
_CLAIM = f"""
SELECT {_JOB_COLUMNS} FROM jobs
WHERE id = (
        SELECT q.id FROM jobs AS q INDEXED BY jobs_active
        WHERE q.{_ACTIVE} AND q.state = 'queued' AND NOT q.blocked
          -- A concurrency group runs one thing at a time: a job of no pipeline, or one pipeline (all of whose jobs
          -- may run together); the group's pipelines go in order. Running jobs first: they are few.
          AND (q.concurrency_group IS NULL OR NOT EXISTS (
                SELECT 1 FROM jobs AS r INDEXED BY jobs_active
                WHERE r.{_ACTIVE} AND r.state = 'running' AND r.concurrency_group = q.concurrency_group
                  AND (q.pipeline_id IS NULL OR r.pipeline_id IS NOT q.pipeline_id))
              AND (q.pipeline_id IS NULL OR NOT EXISTS (
                SELECT 1 FROM jobs AS r INDEXED BY jobs_active
                WHERE r.{_ACTIVE} AND r.state = 'queued' AND r.concurrency_group = q.concurrency_group
                  AND r.pipeline_id < q.pipeline_id)))
          AND (q.max_parallel IS NULL OR (
                SELECT count(*) FROM jobs AS s INDEXED BY jobs_active
                WHERE s.{_ACTIVE} AND s.state = 'running' AND s.pipeline_id = q.pipeline_id AND s.name = q.name
               ) < q.max_parallel)
          AND (:quota IS NULL OR coalesce(q.slug, '') NOT IN (SELECT value FROM json_each(:quota, '$.s')) AND
               ifnull(q.slug, '') || char(31) || ifnull(q.user, '') NOT IN (SELECT value FROM json_each(:quota, '$.u')))
          AND {LABEL_FILTER}
        ORDER BY q.priority DESC, q.seq, q.id
        LIMIT 1)
  AND (SELECT count(*) FROM jobs INDEXED BY jobs_active WHERE {_ACTIVE} AND state = 'running') < :max
"""
_TAKE = """
UPDATE jobs SET state = 'running', attempts = attempts + 1, runner_id = :runner, lease_expires = :now + :lease,
                started_at = :now
WHERE id = :id AND state = 'queued'
"""
# What _TAKE changes, by position in the row: claim returns the row as _TAKE left it without reading it again.
_STATE, _STARTED = _COL["state"], _COL["started_at"]
assert (_COL["attempts"], _COL["runner_id"], _COL["lease_expires"]) == (_STATE + 1, _STATE + 2, _STATE + 3)

_PIPELINE_STARTED = "UPDATE pipelines SET state = 'running', started_at = ? WHERE id = ? AND state = 'queued'"
_HEARTBEAT = """
UPDATE jobs SET lease_expires = :now + :lease
WHERE id = :id AND state = 'running' AND runner_id = :runner
"""

_COMPLETE = """
UPDATE jobs SET state = :state, error = :error, finished_at = :now, lease_expires = NULL,
                outputs = coalesce(:outputs, outputs)
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
    lease_expires = NULL, error = :error
WHERE id = :id AND state = 'running' AND (:runner IS NULL OR runner_id = :runner)
RETURNING state
"""

_EXPIRED = f"""
SELECT id FROM jobs INDEXED BY jobs_active WHERE {_ACTIVE} AND state = 'running' AND lease_expires <= ? ORDER BY id DESC
"""

# A queued job is cancelled at once; a running one is flagged and its runner stops it. {where} picks the
# jobs: one id (cancel), or a concurrency group's older jobs (a superseding delivery).
CANCEL = f"""
UPDATE jobs
SET state = CASE state WHEN 'queued' THEN 'cancelled' ELSE state END,
    finished_at = CASE state WHEN 'queued' THEN :now ELSE finished_at END,
    cancel_requested = 1
WHERE {_ACTIVE} AND {{where}}
RETURNING id, state
"""

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
# Never the newest job: without AUTOINCREMENT (a third page written per enqueue) SQLite gives a new row
# the highest id + 1, so deleting the newest would hand its id out again, and job ids are public.
# A job of a pipeline goes only with its finished pipeline (its dependants' rules read it while the pipeline
# runs); the pipeline row goes once it has no job left, never the newest either, and not while any artifact it
# kept is unexpired (its listing and links name the pipeline; the jobs' rows go by job_days as always).
_DELETE_FINISHED = """
DELETE FROM jobs WHERE state NOT IN ('queued', 'running') AND finished_at < ? AND id < (SELECT max(id) FROM jobs)
  AND (pipeline_id IS NULL
       OR pipeline_id IN (SELECT id FROM pipelines WHERE state NOT IN ('planning', 'queued', 'running')))
"""
_DELETE_EMPTY_PIPELINES = """
DELETE FROM pipelines WHERE state NOT IN ('planning', 'queued', 'running') AND finished_at < ?
  AND id < (SELECT max(id) FROM pipelines) AND NOT EXISTS (SELECT 1 FROM jobs WHERE pipeline_id = pipelines.id)
  AND NOT EXISTS (SELECT 1 FROM artifacts WHERE artifacts.pipeline_id = pipelines.id AND artifacts.object IS NOT NULL
                  AND artifacts.expires_at > ?)
"""
_ACTIVE_COUNTS = f"SELECT state, count(*) FROM jobs INDEXED BY jobs_active WHERE {_ACTIVE} GROUP BY state"

Order = Literal["newest", "dispatch"]
_ENDS = {state.value: state for state in JobState if state.is_terminal}  # a str enum: its members find theirs


class JobQueries(QueueBase):
    """Producers, runners and readers of jobs; every state change is one guarded statement in one transaction."""

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
        pipeline = None if spec.pipeline is None else spec_json(spec.pipeline, "pipeline")
        with self._transaction() as conn:
            cur = conn.execute(
                ENQUEUE,
                (spec.repo, spec.ref, spec.sha, spec.event, spec.priority, spec.concurrency_group, spec.fork,
                 spec.pr_number, spec.base_ref, pipeline, spec_json(spec.env, "env"), spec_json(spec.meta, "meta"),
                 self._clock(), *job_scope(spec)),
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
            rows = conn.execute(CANCEL.format(where="id = :id"), {"id": job_id, "now": self._clock()}).fetchall()
            if not rows:
                raise self._refuse(conn, job_id, "cancel")
            state = JobState(rows[0][1])
            settled = self._settle_job(conn, job_id) if state.is_terminal else None
        self._settled(settled)
        return state

    # -- runners -------------------------------------------------------------------------------------

    def claim(self, runner_id: str, lease_seconds: float, labels: Sequence[str] | None = ()) -> Job | None:
        """The next runnable job whose runs_on `labels` has all of (None if none, or max_concurrent run), leased."""
        with self._transaction() as conn:
            now = self._clock()
            params = {"runner": runner_id, "lease": lease_seconds, "now": now, "max": self.max_concurrent,
                      "quota": self._quota_filter(conn), "labels": label_json(labels)}
            picked = conn.execute(_CLAIM, params).fetchone()
            if picked is None:
                return None
            params["id"] = picked[0]  # _TAKE's other names are the claim's (sqlite3 ignores the keys it does not use)
            conn.execute(_TAKE, params)
            attempts = picked[_STATE + 1] + 1
            row = (*picked[:_STATE], "running", attempts, runner_id, now + lease_seconds, *picked[_STATE + 4:_STARTED],
                   now, *picked[_STARTED + 1:])
            # A retried job still holds the steps of its previous attempt until the runner resets them.
            steps = self._steps(conn, row[0]) if attempts > 1 else ()
            pipeline_id = row[_COL["pipeline_id"]]
            started = pipeline_id is not None and conn.execute(_PIPELINE_STARTED, (now, pipeline_id)).rowcount
        if started:
            self._settled(Settlement(pipeline_id, state=PipelineState.running))
        return _job(row, steps)

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
        self, job_id: int, state: JobState | str, error: str | None = None, runner_id: str | None = None,
        outputs: Mapping[str, str] | None = None,
    ) -> None:
        """Finish a job in a terminal state; with runner_id, only if it is still that runner's running job.
        `outputs` are what its steps wrote to $FORGECI_OUTPUT (its dependants see them)."""
        end = _ENDS.get(state) if isinstance(state, str) else None  # complete's hot path: no enum call
        if end is None:
            raise ValueError(f"complete() needs a terminal state, not {JobState(state)}")
        state = end
        with self._transaction() as conn:
            params = {"id": job_id, "state": state, "error": error, "runner": runner_id, "now": self._clock(),
                      "outputs": None if outputs is None else json.dumps(dict(outputs))}
            if conn.execute(_COMPLETE, params).rowcount == 0:
                raise self._refuse(conn, job_id, f"complete as {state}", runner_id)
            settled = self._settle_job(conn, job_id)
        self._settled(settled)

    def fail_infra(self, job_id: int, error: str, runner_id: str | None = None) -> JobState:
        """An infrastructure fault: requeue at the front while retries remain, else error; returns the new state."""
        with self._transaction() as conn:
            state = self._requeue(conn, job_id, error, runner_id)
            if state is None:
                raise self._refuse(conn, job_id, "fail", runner_id)
            settled = self._settle_job(conn, job_id) if state.is_terminal else None
        self._settled(settled)
        return state

    def expire_leases(self) -> list[int]:
        """Treat every running job whose lease has expired as an infrastructure fault; returns their ids."""
        with self._transaction() as conn:
            expired = [row[0] for row in conn.execute(_EXPIRED, (self._clock(),)).fetchall()]
            # Newest first, each to the front: the oldest expired job ends up first in line.
            settled = []
            for job_id in expired:
                state = self._requeue(conn, job_id, "lease expired", None)
                if state is not None and state.is_terminal:
                    settled.append(self._settle_job(conn, job_id))
        for settlement in settled:
            self._settled(settlement)
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
        after = decode_cursor(cursor, order, 3 if order == "dispatch" else 1) if cursor is not None else None
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
            next_cursor = encode_cursor(order, [last[_COL[column]] for column in key])
        return [_job(row) for row in rows], next_cursor

    def wait_reasons(self, job_ids: Sequence[int]) -> dict[int, str]:
        """Why each of these queued jobs is not running yet, the first reason that holds, in claim's own order:
        its needs, its concurrency group, its matrix's max_parallel, or no free slot."""
        reasons: dict[int, str] = {}
        with self._transaction("BEGIN") as conn:
            running = conn.execute(f"SELECT count(*) FROM jobs INDEXED BY jobs_active "
                                   f"WHERE {_ACTIVE} AND state = 'running'").fetchone()[0]
            for job_id in job_ids:
                row = conn.execute("SELECT state, blocked, needs, pipeline_id, concurrency_group, name, max_parallel "
                                   "FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None or row[0] != "queued":
                    continue
                _, blocked, needs, pipeline_id, group, name, max_parallel = row
                reasons[job_id] = self._wait_reason(conn, job_id, bool(blocked), json.loads(needs), pipeline_id,
                                                    group, name, max_parallel, running)
        return reasons

    def _wait_reason(self, conn: sqlite3.Connection, job_id: int, blocked: bool, needs: list[str],
                     pipeline_id: int | None, group: str | None, name: str | None, max_parallel: int | None,
                     running: int) -> str:
        if blocked:
            pending = [r[0] for r in conn.execute(
                f"SELECT DISTINCT name FROM jobs WHERE pipeline_id = ? AND {_ACTIVE} AND name IN "
                f"(SELECT value FROM json_each(?)) ORDER BY name", (pipeline_id, json.dumps(needs)))]
            return f"waits for {', '.join(pending) or 'its needs'}"
        if group is not None:
            other = conn.execute(
                f"SELECT pipeline_id, id FROM jobs INDEXED BY jobs_active WHERE {_ACTIVE} AND concurrency_group = ? "
                f"AND (state = 'running' AND (? IS NULL OR pipeline_id IS NOT ?) OR pipeline_id < ?) LIMIT 1",
                (group, pipeline_id, pipeline_id, pipeline_id)).fetchone()
            if other is not None:
                holder = f"pipeline {other[0]}" if other[0] is not None else f"job {other[1]}"
                return f"waits for {holder} of its concurrency group {group}"
        if max_parallel is not None:
            busy = conn.execute(f"SELECT count(*) FROM jobs INDEXED BY jobs_active WHERE {_ACTIVE} AND "
                                f"state = 'running' AND pipeline_id = ? AND name = ?", (pipeline_id, name)).fetchone()[0]
            if busy >= max_parallel:
                return f"max_parallel: {busy} of {name}'s {max_parallel} running"
        if running >= self.max_concurrent:
            return f"no free slot: {running} of {self.max_concurrent} running"
        return "next in line"

    def jobs_of_pipeline(self, pipeline_id: int) -> list[Job]:
        """A pipeline's jobs in plan order, with their steps (its page, its DAG)."""
        with self._transaction("BEGIN") as conn:
            rows = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE pipeline_id = ? ORDER BY id",
                                (pipeline_id,)).fetchall()
            return [_job(row, self._steps(conn, row[0])) for row in rows]

    def running_jobs(self) -> list[Job]:
        """The running jobs (without their steps), oldest first."""
        with self._transaction("BEGIN") as conn:
            return [_job(row) for row in conn.execute(_RUNNING).fetchall()]

    def delete_finished_jobs(self, ts: float, now: float | None = None) -> list[int]:
        """Retention: delete terminal jobs (and their steps) finished before ts; returns their ids (for their logs).
        A pipeline's row stays while an artifact of it is unexpired at `now` (default: the queue's clock)."""
        with self._transaction() as conn:
            deleted = sorted(row[0] for row in conn.execute(_DELETE_FINISHED + " RETURNING id", (ts,)).fetchall())
            conn.execute(_DELETE_EMPTY_PIPELINES, (ts, self._clock() if now is None else now))
            return deleted

    def state_of(self, job_id: int) -> JobState:
        """The job's state alone: cheaper than get() for a follower polling for the end."""
        with self._transaction("BEGIN") as conn:
            row = conn.execute(_STATE_OF, (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return JobState(row[0])

    def active_counts(self) -> tuple[int, int]:
        """(queued, running) from the small active-jobs index, without reading the finished history."""
        with self._transaction("BEGIN") as conn:
            found = dict(conn.execute(_ACTIVE_COUNTS).fetchall())
        return found.get("queued", 0), found.get("running", 0)

    @staticmethod
    def _steps(conn: sqlite3.Connection, job_id: int) -> tuple[StepRecord, ...]:
        return tuple(
            StepRecord(idx, name, StepState(state), code, started, finished,
                       None if started is None or finished is None else finished - started)
            for idx, name, state, code, started, finished in conn.execute(_STEPS, (job_id,)).fetchall()
        )

