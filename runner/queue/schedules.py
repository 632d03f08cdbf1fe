"""The schedules table: each cron schedule's next due time, claimed with the pipeline it makes in one transaction,
so a due time fires once whatever the number of ticks (or processes) racing for it, and across restarts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from runner.models import JobSpec, PipelineState
from runner.queue.pipelines import PipelineQueries


@dataclass(frozen=True)
class ScheduleRow:
    """A schedule as stored, with its last pipeline's state when that pipeline is still there."""

    name: str
    fingerprint: str
    next_due: float | None
    last_due: float | None
    last_pipeline: int | None
    last_state: PipelineState | None


@dataclass(frozen=True)
class Fired:
    """A due time claimed, and the pipeline made for it."""

    name: str
    due: float
    pipeline_id: int


class ScheduleQueries(PipelineQueries):
    """Schedules: synced with the settings, read, and fired."""

    def sync_schedules(self, wanted: Sequence[tuple[str, str, float | None]]) -> None:
        """Make the table hold exactly `wanted` (name, fingerprint, first due time): a new schedule, or one whose
        fingerprint changed, starts at its first due time; the others keep theirs (a restart misses nothing)."""
        now = self._clock()
        with self._transaction() as conn:
            names = [name for name, _, _ in wanted]
            marks = ",".join("?" * len(names))
            # `NOT IN ()` is SQLite's, not PostgreSQL's: no schedules wanted means none kept
            conn.execute(f"DELETE FROM schedules WHERE name NOT IN ({marks})" if names else "DELETE FROM schedules",
                         names)
            for name, fingerprint, first_due in wanted:
                conn.execute(
                    "INSERT INTO schedules (name, fingerprint, next_due, updated_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET fingerprint = excluded.fingerprint, "
                    "next_due = excluded.next_due, updated_at = excluded.updated_at "
                    "WHERE schedules.fingerprint != excluded.fingerprint", (name, fingerprint, first_due, now))

    def schedules(self) -> list[ScheduleRow]:
        with self._transaction("BEGIN") as conn:
            rows = conn.execute(
                "SELECT s.name, s.fingerprint, s.next_due, s.last_due, s.last_pipeline, p.state FROM schedules s "
                "LEFT JOIN pipelines p ON p.id = s.last_pipeline ORDER BY s.name").fetchall()
        return [ScheduleRow(name, fingerprint, next_due, last_due, last, None if state is None else
                            PipelineState(state)) for name, fingerprint, next_due, last_due, last, state in rows]

    def fire_schedule(self, name: str, due: float, next_due: float | None, spec: JobSpec) -> Fired | None:
        """Claim due time `due` of schedule `name` and create its pipeline, in one transaction; None when another
        tick claimed it first (or the schedule changed meanwhile). Its next due time becomes `next_due`."""
        with self._transaction() as conn:
            claimed = conn.execute("UPDATE schedules SET next_due = ?, last_due = ?, updated_at = ? "
                                   "WHERE name = ? AND next_due = ?",
                                   (next_due, due, self._clock(), name, due)).rowcount
            if not claimed:
                return None
            pipeline_id = self._create_pipeline(conn, spec, self._clock())
            conn.execute("UPDATE schedules SET last_pipeline = ? WHERE name = ?", (pipeline_id, name))
            return Fired(name, due, pipeline_id)

    def run_schedule(self, name: str, fingerprint: str, first_due: float | None, spec: JobSpec) -> int:
        """A pipeline of schedule `name` now, by hand: its due times stay as they are (a schedule no scheduler
        stored yet is stored, due at `first_due`)."""
        with self._transaction() as conn:
            now = self._clock()
            pipeline_id = self._create_pipeline(conn, spec, now)
            conn.execute("INSERT INTO schedules (name, fingerprint, next_due, last_due, last_pipeline, updated_at) "
                         "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                         "last_due = excluded.last_due, last_pipeline = excluded.last_pipeline, "
                         "updated_at = excluded.updated_at", (name, fingerprint, first_due, now, pipeline_id, now))
            return pipeline_id
