"""The notifications outbox: a pipeline's end, written in the transaction that ends it, delivered later.

`record_end` runs inside the transaction that settles a pipeline into a terminal state and writes one row with
target NULL: the durable fact "this pipeline ended so". The server (bot.notify) fans such a row out, in one
transaction, into one row per [[notify]] target that wants it, and delivers those with retries and backoff. A
claimed row's `next_at` is pushed on before its delivery starts, so a crash mid-delivery retries it after that
delay rather than losing it (at least once; a receiver that answered but whose answer never came back may see
it twice, the one case no outbox avoids).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from runner.queue.base import QueueBase

# Pipelines whose end counts for "fixed": a cancelled one was a decision and says nothing about the branch.
_DECIDED = ("success", "failure", "error")
_PREVIOUS = ("SELECT state FROM pipelines INDEXED BY pipelines_branch WHERE repo = ? AND ref = ? AND id < ? "
             "AND state IN ('success', 'failure', 'error') ORDER BY id DESC LIMIT 1")
_NOTIFICATION = "id, pipeline_id, target, kind, event, attempts"
RECORD_MANY = 500  # outbox rows per INSERT of record_cancelled (3 parameters each)


@dataclass(frozen=True)
class Notification:
    """One outbox row: a pipeline's end (target None) or its message to one target."""

    id: int
    pipeline_id: int
    target: str | None
    kind: str | None
    event: str
    attempts: int


def pipeline_event(conn: sqlite3.Connection, pipeline_id: int, state: str) -> str:
    """The event of a pipeline that ended `state`: its state, or `fixed` for the first success on its repository
    and branch after a failure (or error) — or of a retried pipeline whose own last end was one."""
    if state != "success":
        return state
    # A retried pipeline that failed before succeeds now: its own last end is what it fixes.
    own = conn.execute("SELECT event FROM notifications INDEXED BY notifications_pipeline WHERE pipeline_id = ? "
                       "AND target IS NULL AND event != 'cancelled' ORDER BY id DESC LIMIT 1",
                       (pipeline_id,)).fetchone()
    if own is not None:
        return "fixed" if own[0] in ("failure", "error") else "success"
    row = conn.execute("SELECT repo, ref FROM pipelines WHERE id = ?", (pipeline_id,)).fetchone()
    previous = conn.execute(_PREVIOUS, (row[0], row[1], pipeline_id)).fetchone() if row else None
    return "fixed" if previous is not None and previous[0] != "success" else "success"


def record_end(conn: sqlite3.Connection, pipeline_id: int, state: str, now: float) -> None:
    """In the caller's transaction (the one that ends the pipeline): the outbox row of its end."""
    if state not in (*_DECIDED, "cancelled"):
        return
    conn.execute("INSERT INTO notifications (pipeline_id, event, next_at, created_at) VALUES (?, ?, ?, ?)",
                 (pipeline_id, pipeline_event(conn, pipeline_id, state), now, now))


def record_cancelled(conn: sqlite3.Connection, pipeline_ids: Sequence[int], now: float) -> None:
    """record_end of pipelines that the caller's transaction cancelled (their event needs no read), in one INSERT
    per RECORD_MANY of them."""
    for start in range(0, len(pipeline_ids), RECORD_MANY):
        chunk = pipeline_ids[start:start + RECORD_MANY]
        conn.execute("INSERT INTO notifications (pipeline_id, event, next_at, created_at) VALUES "
                     + ", ".join(["(?, 'cancelled', ?, ?)"] * len(chunk)),
                     [value for pipeline_id in chunk for value in (pipeline_id, now, now)])


class OutboxQueries(QueueBase):
    """The outbox's reads and writes, for the server's delivery loop."""

    def due_notifications(self, limit: int = 32) -> list[Notification]:
        """Pending rows whose time has come, oldest first."""
        with self._transaction("BEGIN") as conn:
            rows = conn.execute(f"SELECT {_NOTIFICATION} FROM notifications INDEXED BY notifications_due "
                                f"WHERE state = 'pending' AND next_at <= ? ORDER BY next_at, id LIMIT ?",
                                (self._clock(), limit)).fetchall()
        return [Notification(*row) for row in rows]

    def next_notification_at(self) -> float | None:
        with self._transaction("BEGIN") as conn:
            return conn.execute("SELECT min(next_at) FROM notifications INDEXED BY notifications_due "
                                "WHERE state = 'pending'").fetchone()[0]

    def fan_out(self, notification_id: int, targets: Iterable[tuple[str, str]]) -> list[Notification]:
        """Replace a pipeline's end row by one row per (target name, kind), in one transaction; [] when another
        process did it first."""
        return self.fan_out_many([(notification_id, targets)])

    def fan_out_many(self, ends: Sequence[tuple[int, Iterable[tuple[str, str]]]]) -> list[Notification]:
        """fan_out for several end rows in one transaction and one UPDATE (a sweep's worth: under a burst of
        superseded pipelines, one commit instead of one per row); the rows made, in the order of `ends`."""
        wanted = {notification_id: list(targets) for notification_id, targets in ends}
        order = {notification_id: i for i, notification_id in enumerate(wanted)}
        made = []
        with self._transaction() as conn:
            now = self._clock()
            fanned = conn.execute(
                "UPDATE notifications SET state = 'fanned', done_at = ? WHERE id IN (SELECT value FROM json_each(?)) "
                "AND state = 'pending' AND target IS NULL RETURNING id, pipeline_id, event",
                (now, json.dumps(list(wanted)))).fetchall()
            for notification_id, pipeline_id, event in sorted(fanned, key=lambda row: order[row[0]]):
                for name, kind in wanted[notification_id]:
                    new_id = conn.execute(
                        "INSERT INTO notifications (pipeline_id, target, kind, event, next_at, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (pipeline_id, name, kind, event, now, now)).lastrowid
                    assert new_id is not None
                    made.append(Notification(new_id, pipeline_id, name, kind, event, 0))
        return made

    def begin_attempt(self, notification_id: int, lease: float) -> bool:
        """Count an attempt and push the row's time on by `lease` (a crash retries it then); False when it is no
        longer pending."""
        with self._transaction() as conn:
            return conn.execute("UPDATE notifications SET attempts = attempts + 1, next_at = ? "
                                "WHERE id = ? AND state = 'pending'",
                                (self._clock() + lease, notification_id)).rowcount == 1

    def notification_delivered(self, notification_id: int) -> None:
        with self._transaction() as conn:
            conn.execute("UPDATE notifications SET state = 'delivered', error = NULL, done_at = ? WHERE id = ?",
                         (self._clock(), notification_id))

    def notification_failed(self, notification_id: int, error: str, retry_in: float | None) -> None:
        """A failed attempt: due again in `retry_in` seconds, or (None) dropped for good."""
        with self._transaction() as conn:
            if retry_in is None:
                conn.execute("UPDATE notifications SET state = 'dropped', error = ?, done_at = ? WHERE id = ?",
                             (error, self._clock(), notification_id))
            else:
                conn.execute("UPDATE notifications SET error = ?, next_at = ? WHERE id = ?",
                             (error, self._clock() + retry_in, notification_id))

    def notification_counts(self) -> dict[tuple[str, str], int]:
        """(kind, state) -> rows, over the outbox's target rows (what /metrics counts)."""
        with self._transaction("BEGIN") as conn:
            rows = conn.execute("SELECT kind, state, count(*) FROM notifications WHERE target IS NOT NULL "
                                "GROUP BY kind, state").fetchall()
        return {(kind, state): count for kind, state, count in rows}

    def notifications_of(self, pipeline_id: int) -> list[tuple[Notification, str]]:
        """A pipeline's outbox rows and their states, in order (tests, diagnostics)."""
        with self._transaction("BEGIN") as conn:
            rows = conn.execute(f"SELECT {_NOTIFICATION}, state FROM notifications WHERE pipeline_id = ? "
                                f"ORDER BY id", (pipeline_id,)).fetchall()
        return [(Notification(*row[:6]), row[6]) for row in rows]

    def branch_pipelines(self, repos: Sequence[str], refs: Sequence[str] | None, limit: int = 1
                         ) -> list[tuple[int, str]]:
        """(id, state) of the newest pipelines of any of `repos` on any of `refs` (None: any ref), newest first."""
        if not repos or refs is not None and not refs:
            return []
        where = f"repo IN ({','.join('?' * len(repos))})"
        if refs is not None:
            where += f" AND ref IN ({','.join('?' * len(refs))})"
        with self._transaction("BEGIN") as conn:
            return [(r[0], r[1]) for r in conn.execute(
                f"SELECT id, state FROM pipelines INDEXED BY pipelines_branch WHERE {where} ORDER BY id DESC "
                f"LIMIT ?", [*repos, *(refs or ()), limit]).fetchall()]

    def pipeline_repos(self) -> list[str]:
        """Every distinct repository a pipeline was made for (clone URLs or paths)."""
        with self._transaction("BEGIN") as conn:
            return [r[0] for r in conn.execute(
                "SELECT DISTINCT repo FROM pipelines INDEXED BY pipelines_branch").fetchall()]
