"""The pipelines table (migration 5): a trigger's pipeline, its planned jobs and their needs, settled as jobs end.

A pipeline is created `planning` (by a delivery or a submit); planning writes its jobs in one transaction. A job
with needs waits `blocked` in the queue; every transaction that ends a job of a pipeline settles it in the same
transaction (`_settle`): jobs whose needs are all done become claimable or end `skipped` (cascading), a failed
matrix member with fail_fast cancels its siblings, and the pipeline's own state follows its jobs.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from config.errors import ConfigError, ConfigIssue
from config.plan import env_name
from runner.errors import InvalidTransition, PipelineNotFound
from runner.models import JobSpec, JobState, PipelineRecord, PipelineState
from runner.queue.base import QueueBase, decode_cursor, encode_cursor
from runner.queue.outbox import record_end
from runner.queue.usage import job_scope

ACTIVE_JOB = ("queued", "running")
# The WHERE of the partial index pipelines_unfinished, as every query using it spells it: comparisons, not an IN
# list, which SQLite tests through a temporary b-tree on each row an insert or state change touches.
UNFINISHED = "(state = 'planning' OR state = 'queued' OR state = 'running')"
FAILED = frozenset({"failure", "timeout", "error"})
_PIPELINE_COLUMNS = ("id, repo, ref, sha, event, spec, state, concurrency_group, cancel_requested, plan_attempts, "
                     "plan_after, error, created_at, started_at, finished_at")
_GET = f"SELECT {_PIPELINE_COLUMNS} FROM pipelines WHERE id = ?"
# A pipeline's progress: its jobs' ids, states and queueing times (the jobs_pipeline index finds them).
_PROGRESS = "SELECT id, state, queued_at, pipeline_id FROM jobs"
_CREATE = """
INSERT INTO pipelines (repo, ref, sha, event, spec, concurrency_group, created_at, plan_after, slug, user)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_JOBS_OF = """
SELECT id, name, display, state, error, needs, condition, continue_on_error, fail_fast, blocked, cascaded,
       cancel_requested, outputs, started_at
FROM jobs WHERE pipeline_id = ? ORDER BY id
"""
_INSERT_JOB = """
INSERT INTO jobs (repo, ref, sha, event, priority, concurrency_group, fork, pr_number, base_ref, pipeline, env, meta,
                  queued_at, pipeline_id, name, display, needs, condition, continue_on_error, fail_fast, max_parallel,
                  blocked, slug, user)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


# write_plan's check that the pipeline still plans. Every coordinator's planner plans the shared `planning`
# pipelines: on PostgreSQL its twin locks the row (postgres_queue.OVERRIDES), so a second plan of the same pipeline
# waits, reads the first one's commit and is refused instead of adding its jobs again (SQLite: BEGIN IMMEDIATE).
PLAN_STATE = "SELECT state, cancel_requested FROM pipelines WHERE id = ?"

@dataclass(frozen=True)
class PlannedJobRow:
    """One job of a plan, as the planner hands it to the queue: its spec and its place in the pipeline."""

    spec: JobSpec
    name: str
    display: str
    needs: tuple[str, ...] = ()
    condition: str = "success"  # the job's `if`: success | failure | always
    continue_on_error: bool = False
    fail_fast: bool = True
    max_parallel: int | None = None
    skip: str | None = None  # why its filters rule it out: planned `skipped` with this reason


@dataclass(frozen=True)
class JobSummary:
    """A job of a pipeline as its summary needs it (a commit status, a view): no spec, no steps."""

    id: int
    name: str
    display: str
    state: JobState
    error: str | None
    continue_on_error: bool

    @property
    def counts_as_failed(self) -> bool:
        """Failed in a way that fails its pipeline."""
        return self.state in FAILED and not self.continue_on_error


@dataclass
class Settlement:
    """What settling a pipeline changed, for job control to publish and act on."""

    pipeline_id: int
    state: PipelineState | None = None  # the pipeline's new state, when it changed
    ready: list[int] = field(default_factory=list)  # jobs whose needs are met: claimable now
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (job, why) that will not run
    cancelled: list[int] = field(default_factory=list)  # queued jobs ended `cancelled` (fail_fast, pipeline cancel)
    stopping: list[int] = field(default_factory=list)  # running jobs flagged for their runners to stop
    reason: str | None = None  # why it was cancelled, when something else than a user decided (superseded)

    def __bool__(self) -> bool:
        return bool(self.state or self.ready or self.skipped or self.cancelled or self.stopping)


@dataclass(frozen=True)
class PipelineStats:
    """Pipelines finished in a range: counts per state and end-to-end durations (seconds)."""

    states: dict[str, int]
    avg_duration: float | None
    p95_duration: float | None

    @property
    def total(self) -> int:
        return sum(self.states.values())

    @property
    def success_rate(self) -> float | None:
        """Of the pipelines that succeeded, failed or ended in error: skipped and cancelled ones decided nothing."""
        decided = sum(self.states.get(state, 0) for state in ("success", "failure", "error"))
        return self.states.get("success", 0) / decided if decided else None


@dataclass
class _Row:
    id: int
    name: str
    display: str
    state: str
    error: str | None
    needs: list[str]
    condition: str
    continue_on_error: bool
    fail_fast: bool
    blocked: bool
    cascaded: bool
    cancel_requested: bool
    outputs: dict[str, str]
    started: bool

    @classmethod
    def of(cls, row: tuple[Any, ...]) -> _Row:
        (job_id, name, display, state, error, needs, condition, coe, fail_fast, blocked, cascaded, cancel, outputs,
         started_at) = row
        return cls(job_id, name or "", display or name or "", state, error, json.loads(needs), condition,
                   bool(coe), bool(fail_fast), bool(blocked), bool(cascaded), bool(cancel),
                   json.loads(outputs) if outputs else {}, started_at is not None)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_JOB

    @property
    def counts_as_failed(self) -> bool:
        return self.state in FAILED and not self.continue_on_error


def condition_holds(condition: str, needs: Sequence[_Row]) -> bool:
    """Whether a job whose needs are all finished runs (the `if` rules of the README)."""
    if condition == "always":
        return True
    if condition == "failure":
        return any(need.state in FAILED for need in needs)
    return all(need.state == "success" or need.state == "skipped" and not need.cascaded
               or need.state in FAILED and need.continue_on_error for need in needs)


def _why_not(condition: str, needs: Sequence[_Row]) -> str:
    if condition == "failure":
        return "not run: if = failure, and every job it needs succeeded"
    blocker = next(n for n in needs if not condition_holds("success", [n]))
    return f"not run: {blocker.display} ended {blocker.state}" + (
        " (skipped because of its own needs)" if blocker.cascaded else "")


def needs_env(needs: Iterable[_Row], mangle: Any) -> dict[str, str]:
    """NEEDS_<JOB>_<KEY> for the outputs of every need (matrix jobs pass none)."""
    env: dict[str, str] = {}
    for need in needs:
        for key, value in need.outputs.items():
            env[f"NEEDS_{mangle(need.name)}_{mangle(key)}"] = value
    return env


def pipeline_state(rows: Sequence[_Row], cancel_requested: bool) -> PipelineState:
    """running while any job runs or waits; failure if a job without continue_on_error failed; cancelled if
    cancelled; skipped if every job was planned skipped by its filters (none ran, none skipped because of a need);
    success otherwise (every job succeeded or was skipped)."""
    if any(r.active for r in rows):
        return PipelineState.running if any(r.started or not r.active for r in rows) else PipelineState.queued
    if any(r.counts_as_failed for r in rows):
        return PipelineState.failure
    if cancel_requested or any(r.state == "cancelled" and not r.continue_on_error for r in rows):
        return PipelineState.cancelled
    if all(r.state == "skipped" and not r.cascaded and not r.started for r in rows):
        return PipelineState.skipped
    return PipelineState.success


class PipelineQueries(QueueBase):
    """Pipelines: created, planned, cancelled, settled; and read."""

    def create_pipeline(self, spec: JobSpec) -> int:
        with self._transaction() as conn:
            return self._create_pipeline(conn, spec, self._clock())

    def _create_pipeline(self, conn: sqlite3.Connection, spec: JobSpec, now: float) -> int:
        cur = conn.execute(_CREATE, (spec.repo, spec.ref, spec.sha, spec.event, spec.to_json(), spec.concurrency_group,
                                     now, now, *job_scope(spec)))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def pipeline(self, pipeline_id: int) -> PipelineRecord:
        with self._transaction("BEGIN") as conn:
            row = conn.execute(_GET, (pipeline_id,)).fetchone()
            if row is None:
                raise PipelineNotFound(pipeline_id)
            jobs = conn.execute(f"{_PROGRESS} WHERE pipeline_id = ? ORDER BY id", (pipeline_id,)).fetchall()
        return _pipeline(row, jobs)

    def list_pipelines(
        self, *, status: str | None = None, repo: str | None = None, limit: int = 50, cursor: str | None = None,
    ) -> tuple[list[PipelineRecord], str | None]:
        """One page of pipelines, newest first (with their job ids), and the next page's cursor (None: the last)."""
        if status is not None and status not in PipelineState.__members__:
            raise ConfigError(ConfigIssue("request", "status", f"expected a pipeline state, got {status!r}"))
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ConfigError(ConfigIssue("request", "limit", f"expected an integer 1..1000, got {limit!r}"))
        where, params = [], []  # type: ignore[var-annotated]
        for column, value in (("state", status), ("repo", repo)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if cursor is not None:
            where.append("id < ?")
            params.append(decode_cursor(cursor, "pipelines", 1)[0])
        sql = (f"SELECT {_PIPELINE_COLUMNS} FROM pipelines {'WHERE ' + ' AND '.join(where) if where else ''} "
               f"ORDER BY id DESC LIMIT ?")
        with self._transaction("BEGIN") as conn:
            rows = conn.execute(sql, [*params, limit + 1]).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            jobs: dict[int, list[tuple[int, str, float]]] = defaultdict(list)
            if rows:
                marks = ",".join("?" * len(rows))
                for job_id, state, queued_at, pipeline_id in conn.execute(
                        f"{_PROGRESS} WHERE pipeline_id IN ({marks}) ORDER BY id", [row[0] for row in rows]):
                    jobs[pipeline_id].append((job_id, state, queued_at))
        next_cursor = encode_cursor("pipelines", [rows[-1][0]]) if more else None
        return [_pipeline(row, jobs[row[0]]) for row in rows], next_cursor

    def pipeline_stats(self, since: float, until: float) -> PipelineStats:
        """The pipelines finished in [since, until): per state, and their end-to-end durations (first job queued
        to last job done; skipped pipelines, which ran nothing, left out)."""
        with self._transaction("BEGIN") as conn:
            rows = conn.execute(
                "SELECT p.state, p.finished_at - (SELECT min(j.queued_at) FROM jobs j WHERE j.pipeline_id = p.id) "
                "FROM pipelines p WHERE p.finished_at >= ? AND p.finished_at < ?", (since, until)).fetchall()
        states: dict[str, int] = defaultdict(int)
        durations = sorted(d for s, d in rows if d is not None and s != "skipped")  # skipped: nothing ran
        for state, _ in rows:
            states[state] += 1
        p95 = durations[max(0, -(-len(durations) * 95 // 100) - 1)] if durations else None
        return PipelineStats(dict(states), sum(durations) / len(durations) if durations else None, p95)

    def pipeline_jobs(self, pipeline_id: int) -> list[JobSummary]:
        """The summaries of a pipeline's jobs in plan order, in one query (a commit status reads them often)."""
        with self._transaction("BEGIN") as conn:
            rows = [_Row.of(r) for r in conn.execute(_JOBS_OF, (pipeline_id,)).fetchall()]
        return [JobSummary(r.id, r.name, r.display, JobState(r.state), r.error, r.continue_on_error) for r in rows]

    def due_plans(self, limit: int = 16) -> list[PipelineRecord]:
        """Pipelines waiting to be planned whose (back-off) time has come, oldest first."""
        with self._transaction("BEGIN") as conn:
            rows = conn.execute(f"SELECT {_PIPELINE_COLUMNS} FROM pipelines INDEXED BY pipelines_unfinished "
                                f"WHERE {UNFINISHED} AND state = 'planning' "
                                f"AND plan_after <= ? ORDER BY id LIMIT ?", (self._clock(), limit)).fetchall()
        return [_pipeline(row) for row in rows]

    def next_plan_at(self) -> float | None:
        with self._transaction("BEGIN") as conn:
            row = conn.execute("SELECT min(plan_after) FROM pipelines INDEXED BY pipelines_unfinished "
                               f"WHERE {UNFINISHED} AND state = 'planning'").fetchone()
        return row[0]

    def write_plan(self, pipeline_id: int, sha: str | None, jobs: Sequence[PlannedJobRow]) -> tuple[list[int],
                                                                                                   Settlement]:
        """The planned jobs of a pipeline that is still planning, in one transaction; InvalidTransition when it
        is not (cancelled or superseded meanwhile). Jobs without needs are claimable at once."""
        with self._transaction() as conn:
            row = conn.execute(PLAN_STATE, (pipeline_id,)).fetchone()
            if row is None:
                raise PipelineNotFound(pipeline_id)
            if row[0] != "planning":
                raise InvalidTransition(f"pipeline {pipeline_id} is {row[0]}, not planning")
            now = self._clock()
            ids = []
            for job in jobs:
                spec = job.spec
                ids.append(conn.execute(_INSERT_JOB, (
                    spec.repo, spec.ref, spec.sha, spec.event, spec.priority, spec.concurrency_group, spec.fork,
                    spec.pr_number, spec.base_ref, None if spec.pipeline is None else json.dumps(spec.pipeline),
                    json.dumps(dict(spec.env)), json.dumps(dict(spec.meta)), now, pipeline_id, job.name, job.display,
                    json.dumps(list(job.needs)), job.condition, job.continue_on_error, job.fail_fast,
                    job.max_parallel, bool(job.needs), *job_scope(spec))).lastrowid)
                if job.skip is not None:
                    conn.execute("UPDATE jobs SET state = 'skipped', blocked = 0, error = ?, finished_at = ? "
                                 "WHERE id = ?", (job.skip, now, ids[-1]))
            conn.execute("UPDATE pipelines SET state = 'queued', sha = coalesce(?, sha), error = NULL WHERE id = ?",
                         (sha, pipeline_id))
            settled = self._settle(conn, pipeline_id)
            settled.skipped[:0] = [(i, job.skip) for i, job in zip(ids, jobs, strict=True) if job.skip is not None]
            return ids, settled

    def plan_failed(self, pipeline_id: int, error: str, *, retry_in: float | None) -> PipelineState:
        """Planning met an infrastructure fault: plan again in `retry_in` seconds, or (None) end `error`."""
        with self._transaction() as conn:
            if retry_in is None:
                if conn.execute("UPDATE pipelines SET state = 'error', error = ?, finished_at = ? "
                                "WHERE id = ? AND state = 'planning'", (error, self._clock(), pipeline_id)).rowcount:
                    record_end(conn, pipeline_id, "error", self._clock())
                return PipelineState.error
            conn.execute("UPDATE pipelines SET plan_attempts = plan_attempts + 1, plan_after = ?, error = ? "
                         "WHERE id = ? AND state = 'planning'", (self._clock() + retry_in, error, pipeline_id))
            return PipelineState.planning

    def cancel_pipeline(self, pipeline_id: int) -> Settlement:
        """Cancel a pipeline: its queued (and waiting) jobs end `cancelled`, its running ones are flagged, and no
        job of it runs after (not even `if = always`). InvalidTransition when it already ended."""
        with self._transaction() as conn:
            row = conn.execute("SELECT state FROM pipelines WHERE id = ?", (pipeline_id,)).fetchone()
            if row is None:
                raise PipelineNotFound(pipeline_id)
            if row[0] not in ("planning", "queued", "running"):
                raise InvalidTransition(f"cannot cancel pipeline {pipeline_id}: it is {row[0]}")
            return self._cancel_pipeline(conn, pipeline_id)

    def _cancel_pipeline(self, conn: sqlite3.Connection, pipeline_id: int, reason: str | None = None) -> Settlement:
        now = self._clock()
        settled = Settlement(pipeline_id, reason=reason)
        # The reason stays with the pipeline and its cancelled jobs: their pages and commit statuses say why.
        self._lock_pipeline(conn, pipeline_id)  # PostgreSQL: the state read below stays true until the commit
        if conn.execute("SELECT state FROM pipelines WHERE id = ?", (pipeline_id,)).fetchone()[0] == "planning":
            # No jobs yet (planning writes them and leaves `planning` in one transaction, write_plan): it ends
            # here, in one statement (a webhook superseding its branch's last push does this every time).
            conn.execute("UPDATE pipelines SET cancel_requested = 1, error = coalesce(?, error), state = 'cancelled', "
                         "finished_at = ? WHERE id = ?", (reason, now, pipeline_id))
            settled.state = PipelineState.cancelled
            record_end(conn, pipeline_id, "cancelled", now)
            return settled
        conn.execute("UPDATE pipelines SET cancel_requested = 1, error = coalesce(?, error) WHERE id = ?",
                     (reason, pipeline_id))
        for job_id, state in conn.execute(
                "UPDATE jobs SET state = CASE state WHEN 'queued' THEN 'cancelled' ELSE state END, "
                "finished_at = CASE state WHEN 'queued' THEN ? ELSE finished_at END, cancel_requested = 1, "
                "error = CASE state WHEN 'queued' THEN coalesce(?, error) ELSE error END, "
                "blocked = 0 WHERE pipeline_id = ? AND state IN ('queued', 'running') RETURNING id, state",
                (now, reason, pipeline_id)).fetchall():
            (settled.cancelled if state == "cancelled" else settled.stopping).append(job_id)
        more = self._settle(conn, pipeline_id)
        settled.state = more.state
        return settled

    def retry_failed(self, pipeline_id: int) -> tuple[list[int], Settlement]:
        """Queue again, in the same finished pipeline, its jobs that ended failure, timeout, error or cancelled
        and the ones skipped because of them; the jobs that succeeded keep their results (and outputs)."""
        with self._transaction() as conn:
            row = conn.execute("SELECT state FROM pipelines WHERE id = ?", (pipeline_id,)).fetchone()
            if row is None:
                raise PipelineNotFound(pipeline_id)
            if row[0] in ("planning", "queued", "running"):
                raise InvalidTransition(f"pipeline {pipeline_id} is {row[0]}; only a finished one can be retried")
            again = [r[0] for r in conn.execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, runner_id = NULL, lease_expires = NULL, "
                "cancel_requested = 0, started_at = NULL, finished_at = NULL, error = NULL, cache_hit = NULL, "
                "outputs = NULL, cascaded = 0, seq = 0, blocked = needs != '[]', queued_at = ? "
                "WHERE pipeline_id = ? AND (state IN ('failure', 'timeout', 'error', 'cancelled') OR cascaded) "
                "RETURNING id", (self._clock(), pipeline_id))]
            if not again:
                raise InvalidTransition(f"pipeline {pipeline_id} has no failed job to retry")
            conn.executemany("DELETE FROM steps WHERE job_id = ?", [(job_id,) for job_id in again])
            conn.execute("UPDATE pipelines SET state = 'queued', cancel_requested = 0, finished_at = NULL "
                         "WHERE id = ?", (pipeline_id,))
            return sorted(again), self._settle(conn, pipeline_id)

    def settle_all(self) -> list[Settlement]:
        """Settle every unfinished pipeline: after a crash between a job's end and nothing (every path settles in
        its own transaction, so this finds work only if the database was changed by hand or by an old forgeci)."""
        with self._transaction() as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM pipelines INDEXED BY pipelines_unfinished "
                                              f"WHERE {UNFINISHED} AND state != 'planning'").fetchall()]
            return [s for pid in ids if (s := self._settle(conn, pid))]

    def _lock_pipeline(self, conn: sqlite3.Connection, pipeline_id: int) -> None:
        """Settling reads every job of the pipeline: two writers ending two of its jobs at once must not each miss
        the other's end. SQLite's BEGIN IMMEDIATE serializes writers already; PostgresQueue locks the row."""

    def _settle_job(self, conn: sqlite3.Connection, job_id: int) -> Settlement | None:
        """Settle the pipeline of job `job_id` (None for a job of no pipeline), in the caller's transaction."""
        row = conn.execute("SELECT pipeline_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or row[0] is None:
            return None
        return self._settle(conn, row[0])

    def _settle(self, conn: sqlite3.Connection, pipeline_id: int) -> Settlement:
        """Unblock, skip (cascading) and fail-fast the jobs of a pipeline; then derive its state."""
        self._lock_pipeline(conn, pipeline_id)
        now = self._clock()
        settled = Settlement(pipeline_id)
        rows = [_Row.of(r) for r in conn.execute(_JOBS_OF, (pipeline_id,)).fetchall()]
        by_name: Mapping[str, list[_Row]] = _group(rows)
        for members in by_name.values():  # fail fast: a failed member cancels its unfinished siblings
            if any(m.state in FAILED and m.fail_fast and not m.continue_on_error for m in members) and len(members) > 1:
                for sibling in members:
                    if sibling.active and not sibling.cancel_requested:
                        state = "cancelled" if sibling.state == "queued" else "running"
                        conn.execute("UPDATE jobs SET cancel_requested = 1, blocked = 0, state = ?, "
                                     "finished_at = CASE WHEN ? = 'cancelled' THEN ? ELSE finished_at END, "
                                     "error = 'cancelled: a sibling failed (fail_fast)' WHERE id = ?",
                                     (state, state, now, sibling.id))
                        sibling.cancel_requested, sibling.state = True, state
                        (settled.cancelled if state == "cancelled" else settled.stopping).append(sibling.id)
        changed = True
        while changed:  # a skip can settle the jobs that need the skipped one
            changed = False
            for row in rows:
                if not (row.blocked and row.state == "queued"):
                    continue
                needs = [m for name in row.needs for m in by_name.get(name, [])]
                if any(m.active for m in needs):
                    continue
                row.blocked = False
                if condition_holds(row.condition, needs):
                    env = needs_env(needs, env_name)
                    conn.execute("UPDATE jobs SET blocked = 0, env = json_patch(env, ?) WHERE id = ?",
                                 (json.dumps(env), row.id))
                    settled.ready.append(row.id)
                else:
                    why = _why_not(row.condition, needs)
                    conn.execute("UPDATE jobs SET blocked = 0, cascaded = 1, state = 'skipped', error = ?, "
                                 "finished_at = ? WHERE id = ?", (why, now, row.id))
                    row.state, row.cascaded, row.error = "skipped", True, why
                    settled.skipped.append((row.id, why))
                    changed = True
        pipeline = conn.execute("SELECT state, cancel_requested, started_at FROM pipelines WHERE id = ?",
                                (pipeline_id,)).fetchone()
        if pipeline is not None and rows:
            state = pipeline_state(rows, bool(pipeline[1]))
            if state != pipeline[0]:
                finished = now if state not in (PipelineState.queued, PipelineState.running) else None
                started = pipeline[2] if pipeline[2] is not None or state is PipelineState.queued else now
                conn.execute("UPDATE pipelines SET state = ?, started_at = ?, finished_at = ? WHERE id = ?",
                             (state, started, finished, pipeline_id))
                settled.state = state
                if finished is not None:
                    record_end(conn, pipeline_id, state, now)  # the notifications outbox (runner.queue.outbox)
        return settled


def _group(rows: Iterable[_Row]) -> dict[str, list[_Row]]:
    grouped: dict[str, list[_Row]] = defaultdict(list)
    for row in rows:
        grouped[row.name].append(row)
    return grouped


def _pipeline(row: tuple[Any, ...], jobs: Sequence[Sequence[Any]] = ()) -> PipelineRecord:
    """A pipeline row and its jobs' (id, state, queued_at) rows, in plan order."""
    (pid, repo, ref, sha, event, spec, state, group, cancel, attempts, plan_after, error, created, started,
     finished) = row
    return PipelineRecord(id=pid, repo=repo, ref=ref, sha=sha, event=event, spec=JobSpec.from_json(spec),
                          state=PipelineState(state), concurrency_group=group, cancel_requested=bool(cancel),
                          plan_attempts=attempts, plan_after=plan_after, error=error, created_at=created,
                          started_at=started, finished_at=finished, job_ids=tuple(job[0] for job in jobs),
                          jobs_done=sum(job[1] not in ACTIVE_JOB for job in jobs),
                          first_queued_at=min((job[2] for job in jobs), default=None))
