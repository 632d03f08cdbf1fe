"""What several coordinators on one PostgreSQL share through the queue database: the commit statuses' feed of state
changes (written by triggers, PostgreSQL only) and the jobs' log lines in chunks (runner/cluster_logs.py).

On SQLite the tables exist and stay empty: one coordinator posts statuses from its own events and keeps logs in
its files alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from runner.logs import LogLine
from runner.queue.base import QueueBase

LOG_CHANNEL = "forgeci_logs"  # NOTIFY payload: the job id whose log has new chunks
STATUS_CHANNEL = "forgeci_status"  # NOTIFY after a commit that wrote status_changes rows (runner/queue/postgres.py)
EVENT_CHANNEL = "forgeci_events"  # NOTIFY payload: one job or pipeline event as JSON (runner/cluster_events.py)


@dataclass(frozen=True)
class StatusChange:
    """A job's (job_id set) or a pipeline's state change, in the order the database numbered them."""

    id: int
    job_id: int | None
    pipeline_id: int | None
    state: str


class ClusterQueries(QueueBase):
    def status_changes(self, limit: int = 500) -> list[StatusChange]:
        """The changes not yet offered to the status reporter, oldest first."""
        with self._transaction("BEGIN") as conn:
            rows = conn.execute("SELECT id, job_id, pipeline_id, state FROM status_changes WHERE done_at IS NULL "
                                "ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [StatusChange(*row) for row in rows]

    def recent_status_changes(self, since: float, limit: int = 5000) -> list[StatusChange]:
        """The changes offered since `since`: a coordinator taking the reporter over offers them again (the one
        before may have died with their posts under way)."""
        with self._transaction("BEGIN") as conn:
            rows = conn.execute("SELECT id, job_id, pipeline_id, state FROM status_changes WHERE done_at >= ? "
                                "ORDER BY id LIMIT ?", (since, limit)).fetchall()
        return [StatusChange(*row) for row in rows]

    def status_changes_done(self, ids: Sequence[int], prune_before: float) -> None:
        """Mark changes offered; forget those offered before `prune_before`."""
        with self._transaction() as conn:
            now = self._clock()
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                conn.execute(f"UPDATE status_changes SET done_at = ? WHERE id IN ({','.join('?' * len(chunk))})",
                             (now, *chunk))
            conn.execute("DELETE FROM status_changes WHERE done_at < ?", (prune_before,))

    def prune_status_changes(self, before: float) -> int:
        """Forget changes made before `before`, offered or not (maintenance: with no forge to post to, or no
        coordinator posting, nothing marks them)."""
        with self._transaction() as conn:
            return conn.execute("DELETE FROM status_changes WHERE at < ?", (before,)).rowcount

    def add_log_chunk(self, job_id: int, lines: Sequence[LogLine]) -> None:
        """Store consecutive lines of a job's log, and wake the followers of the job on every coordinator. A batch
        sent again after an unanswered commit, with more lines, replaces the shorter chunk it starts like."""
        if not lines:
            return
        data = "".join(line.to_json() + "\n" for line in lines)
        with self._transaction() as conn:
            conn.execute("INSERT INTO log_chunks (job_id, first_n, last_n, lines) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT (job_id, first_n) DO UPDATE SET last_n = excluded.last_n, lines = excluded.lines "
                         "WHERE excluded.last_n > log_chunks.last_n", (job_id, lines[0].n, lines[-1].n, data))
            notify = getattr(conn, "notify", None)
            if notify is not None:
                notify(LOG_CHANNEL, str(job_id))

    def log_lines(self, job_id: int, after: int = 0) -> list[LogLine]:
        """The stored lines of a job's log with n > after, in order, each once."""
        with self._transaction("BEGIN") as conn:
            rows = conn.execute("SELECT lines FROM log_chunks WHERE job_id = ? AND last_n > ? ORDER BY first_n",
                                (job_id, after)).fetchall()
        out: list[LogLine] = []
        last = after
        for (data,) in rows:
            for raw in data.splitlines():
                line = LogLine.from_json(raw)
                if line.n > last:
                    last = line.n
                    out.append(line)
        return out

    def log_last(self, job_id: int) -> int:
        """The number of the last stored line of a job's log (0: none)."""
        with self._transaction("BEGIN") as conn:
            row = conn.execute("SELECT max(last_n) FROM log_chunks WHERE job_id = ?", (job_id,)).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def prune_log_chunks(self) -> int:
        """Delete the chunks of jobs retention removed (maintenance, after the jobs)."""
        with self._transaction() as conn:
            return conn.execute("DELETE FROM log_chunks WHERE job_id NOT IN (SELECT id FROM jobs)").rowcount
