"""The deliveries table (migrations 3, 5): a forge delivery and the pipelines it makes, in one transaction."""

from __future__ import annotations

import bisect
import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from runner.models import JobSpec, JobState, PipelineState
from runner.queue.jobs import CANCEL
from runner.queue.outbox import record_cancelled
from runner.queue.pipelines import _CREATE, UNFINISHED, PipelineQueries, Settlement
from runner.queue.usage import job_scope

_SUPERSEDED = "concurrency_group = :group AND id < :before AND NOT cancel_requested"
# The batch's deliveries of one forge seen before, in one statement: a CROSS JOIN, which SQLite runs in the order
# written (the ids, then a primary key seek each; a plain JOIN scans the table), and not `delivery_id IN (SELECT
# value FROM json_each(?))`, whose PostgreSQL translation would compare the ids as numbers.
_SEEN_DELIVERIES = ("SELECT d.delivery_id, coalesce(d.pipeline_ids, '[]'), d.job_ids FROM json_each(?) AS w "
                    "CROSS JOIN deliveries AS d WHERE d.forge = ? AND d.delivery_id = w.value")
_RECORD_DELIVERY = "INSERT INTO deliveries (forge, delivery_id, pipeline_ids, received_at) VALUES "  # rows added
RECORD_MANY = 500  # delivery rows per INSERT (4 parameters each)
_JOBS_OF = "SELECT id FROM jobs WHERE pipeline_id IN (SELECT value FROM json_each(?)) ORDER BY id"
_PRUNE_DELIVERIES = "DELETE FROM deliveries WHERE received_at < ?"
# Unfinished jobs of no pipeline (queued before pipelines existed, or a job's retry): rare, and looking for them in a
# concurrency group walks every active job, so a transaction looks once whether there are any at all.
_LOOSE_JOBS = ("SELECT 1 FROM jobs INDEXED BY jobs_active WHERE state IN ('queued', 'running') "
               "AND pipeline_id IS NULL LIMIT 1")
_CANCEL_LOOSE = CANCEL.format(where=_SUPERSEDED + " AND pipeline_id IS NULL")
_CREATE_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # _CREATE's row: _create_pipelines repeats it
assert _CREATE.rstrip().endswith(_CREATE_ROW), "_create_pipelines builds its INSERT from _CREATE's last row"
CREATE_MANY = 200  # pipelines per INSERT of _create_pipelines (10 parameters each; SQLite allows 32,766)
# The unfinished pipelines of some groups older than an id, that newer ones supersede (webhooks with
# queue.cancel_superseded); the groups as a JSON array.
_SUPERSEDED_PIPELINES = f"""
SELECT id, concurrency_group FROM pipelines INDEXED BY pipelines_unfinished
WHERE {UNFINISHED} AND concurrency_group IN (SELECT value FROM json_each(?))
      AND id < ? AND NOT cancel_requested
"""
# Superseded pipelines still planning (a push superseding its branch's last one, nearly always): a burst's in one
# statement, each with its reason (the CASE, built per batch), as _cancel_pipeline cancels one; the others (their
# jobs queued or running) go through it.
_CANCEL_PLANNING = """
UPDATE pipelines SET cancel_requested = 1, error = CASE id {reasons} ELSE error END, state = 'cancelled',
                     finished_at = ?
WHERE id IN (SELECT value FROM json_each(?)) AND state = 'planning' RETURNING id
"""
CANCEL_MANY = 200  # superseded pipelines per statement of cancel_superseded
# Forges redeliver for a few days (GitHub: 3); a delivery older than this is answered as a new one.
DELIVERY_MEMORY = 7 * 86400.0
PRUNE_EVERY = 64  # deliveries between two prunings of the deliveries table


@dataclass(frozen=True)
class NewDelivery:
    """A forge delivery to record, with the pipelines it makes (Queue.enqueue_deliveries): one per spec."""

    forge: str
    delivery_id: str
    specs: tuple[JobSpec, ...]
    supersede: bool = False  # each pipeline cancels the older unfinished pipelines of its concurrency group


@dataclass(frozen=True)
class Delivery:
    """What recording a forge delivery did: the pipelines it made (planned later, by the coordinator), and the
    superseded jobs it cancelled or flagged."""

    pipeline_ids: tuple[int, ...]
    redelivery: bool = False  # the (forge, delivery id) was seen before: what it made then
    cancelled: tuple[int, ...] = ()  # superseded queued jobs, cancelled now
    stopping: tuple[int, ...] = ()  # superseded running jobs, flagged for their runner to stop
    job_ids: tuple[int, ...] = ()  # a redelivery: the jobs its pipelines have by now (or, before pipelines, made)
    superseded: tuple[int, ...] = ()  # pipelines it cancelled
    # Of cancelled and stopping, the jobs of no pipeline: no pipeline's settlement speaks for them.
    loose_cancelled: tuple[int, ...] = ()
    loose_stopping: tuple[int, ...] = ()


class DeliveryQueries(PipelineQueries):
    """Webhook intake (runner.committer): deliveries and their pipelines, redeliveries answered from the table."""

    def enqueue_deliveries(self, deliveries: Sequence[NewDelivery]) -> list[Delivery]:
        """Record forge deliveries and enqueue their jobs, in order, in one transaction (all or nothing).

        A burst shares one commit. A redelivery of a (forge, delivery_id) enqueues nothing and returns the jobs
        it made the first time. With `supersede`, each new job cancels (as cancel does) the older unfinished jobs
        of its concurrency group, in the same transaction.
        """
        for delivery in deliveries:
            for spec in delivery.specs:
                spec.to_json()  # a spec JSON cannot hold is its own delivery's fault, found before the transaction
        results: list[Delivery] = []
        settlements: list[Settlement] = []
        with self._transaction() as conn:
            now = self._clock()
            loose = conn.execute(_LOOSE_JOBS).fetchone() is not None
            seen = self._seen(conn, deliveries)
            fresh: dict[tuple[str, str], NewDelivery] = {}
            for delivery in deliveries:
                fresh.setdefault((delivery.forge, delivery.delivery_id), delivery)
            for key in seen:
                fresh.pop(key, None)
            made = dict(zip(fresh, self._record_deliveries(conn, list(fresh.values()), now, settlements, loose)))
            answered: set[tuple[str, str]] = set()
            for delivery in deliveries:
                key = (delivery.forge, delivery.delivery_id)
                if key in seen:
                    results.append(self._redelivery(conn, *seen[key]))
                elif key in answered:  # a second copy in the same batch: its pipelines have no jobs yet
                    results.append(Delivery(made[key].pipeline_ids, redelivery=True))
                else:
                    answered.add(key)
                    results.append(made[key])
            if any(r.pipeline_ids and r.pipeline_ids[0] % PRUNE_EVERY == 0 for r in made.values()):
                conn.execute(_PRUNE_DELIVERIES, (now - DELIVERY_MEMORY,))  # now and then keeps the table small
        for settled in settlements:  # kept only once the transaction committed
            self._settled(settled)
        return results

    @staticmethod
    def _seen(conn: sqlite3.Connection, deliveries: Sequence[NewDelivery]) -> dict[tuple[str, str], tuple[str, str]]:
        """(forge, delivery id) -> (pipeline ids, job ids) as JSON, of the deliveries recorded before: one
        statement per forge in the batch (one, but for a server that several forges deliver to at once)."""
        by_forge: dict[str, list[str]] = {}
        for delivery in deliveries:
            by_forge.setdefault(delivery.forge, []).append(delivery.delivery_id)
        return {(forge, delivery_id): (pipelines, jobs)
                for forge, ids in by_forge.items()
                for delivery_id, pipelines, jobs in conn.execute(_SEEN_DELIVERIES, (json.dumps(ids), forge))}

    @staticmethod
    def _redelivery(conn: sqlite3.Connection, pipeline_ids: str, job_ids: str) -> Delivery:
        """What a delivery seen before made: its pipelines and the jobs they have by now (before pipelines, the
        jobs it made)."""
        pipelines = tuple(json.loads(pipeline_ids))
        jobs = [r[0] for r in conn.execute(_JOBS_OF, (pipeline_ids,))] if pipelines else json.loads(job_ids)
        return Delivery(pipelines, redelivery=True, job_ids=tuple(jobs))

    def _record_deliveries(self, conn: sqlite3.Connection, deliveries: Sequence[NewDelivery], now: float,
                           settlements: list[Settlement], loose: bool) -> list[Delivery]:
        """New deliveries (each once), their pipelines and the older ones these supersede, in a few statements
        for the whole batch: on the commit thread each statement gives the GIL up and waits to get it back from
        the event loop, busy with the next requests, so statements per batch count more than their work."""
        ids = iter(self._create_pipelines(conn, [spec for delivery in deliveries for spec in delivery.specs], now))
        pipeline_ids = [[next(ids) for _ in delivery.specs] for delivery in deliveries]
        newer: dict[str, list[int]] = {}  # group -> its superseding new pipelines, ascending
        for delivery, made in zip(deliveries, pipeline_ids):
            for spec, pipeline_id in zip(delivery.specs, made):
                if delivery.supersede and spec.concurrency_group is not None:
                    newer.setdefault(spec.concurrency_group, []).append(pipeline_id)
        planning_ended: list[int] = []  # superseded pipelines that were planning: their outbox rows in one statement
        settled_by = self.cancel_superseded(conn, self.superseded(conn, newer), now, planning_ended)
        results = []
        for delivery, made in zip(deliveries, pipeline_ids):
            cancelled: list[int] = []
            stopping: list[int] = []
            superseded: list[int] = []
            loose_ended: dict[str, list[int]] = {JobState.cancelled: [], JobState.running: []}
            for spec, pipeline_id in zip(delivery.specs, made):
                if not delivery.supersede or spec.concurrency_group is None:
                    continue
                for settled in settled_by.get(pipeline_id, ()):
                    superseded.append(settled.pipeline_id)
                    cancelled += settled.cancelled
                    stopping += settled.stopping
                    settlements.append(settled)
                if loose:  # jobs of no pipeline in the group go too
                    params = {"group": spec.concurrency_group, "before": 2**62, "now": now}
                    for old_id, state in conn.execute(_CANCEL_LOOSE, params).fetchall():
                        how = JobState.cancelled if state == JobState.cancelled else JobState.running
                        loose_ended[how].append(old_id)
            loose_cancelled, loose_stopping = loose_ended[JobState.cancelled], loose_ended[JobState.running]
            results.append(Delivery(
                tuple(made), False, tuple(sorted(cancelled + loose_cancelled)),
                tuple(sorted(stopping + loose_stopping)), superseded=tuple(superseded),
                loose_cancelled=tuple(sorted(loose_cancelled)), loose_stopping=tuple(sorted(loose_stopping))))
        record_cancelled(conn, planning_ended, now)
        rows = [(d.forge, d.delivery_id, json.dumps(made), now) for d, made in zip(deliveries, pipeline_ids)]
        for start in range(0, len(rows), RECORD_MANY):
            chunk = rows[start:start + RECORD_MANY]
            conn.execute(_RECORD_DELIVERY + ", ".join(["(?, ?, ?, ?)"] * len(chunk)),
                         [value for row in chunk for value in row])
        return results

    def _create_pipelines(self, conn: sqlite3.Connection, specs: Sequence[JobSpec], now: float) -> list[int]:
        """The ids of new pipelines, in the order of `specs`, made by one INSERT for up to CREATE_MANY of them
        (a webhook burst: each statement costs the commit thread the GIL back from the busy event loop)."""
        ids: list[int] = []
        for start in range(0, len(specs), CREATE_MANY):
            chunk = specs[start:start + CREATE_MANY]
            params = [value for spec in chunk for value in (
                spec.repo, spec.ref, spec.sha, spec.event, spec.to_json(), spec.concurrency_group, now, now,
                *job_scope(spec))]
            statement = (_CREATE.rstrip().removesuffix(_CREATE_ROW) + ", ".join([_CREATE_ROW] * len(chunk))
                         + " RETURNING id")
            # RETURNING's order is not promised; the ids are: both databases number one INSERT's rows in the
            # order of its VALUES (SQLite the largest id plus one, PostgreSQL its sequence, which other writers
            # may interleave with but never reorder).
            ids += sorted(row[0] for row in conn.execute(statement, params))
        return ids

    def superseded(self, conn: sqlite3.Connection, newer: Mapping[str, Sequence[int]]) -> dict[int, list[int]]:
        """Which unfinished pipelines the new ones of `newer` (group -> their ids, ascending) supersede, found in
        one statement: new pipeline -> the ones it cancels, oldest first. Each older pipeline goes to the first new
        one after it in its group, as if each new one had cancelled its group's older ones in turn."""
        if not newer:
            return {}
        newest = max(max(ids) for ids in newer.values())
        found = conn.execute(_SUPERSEDED_PIPELINES, (json.dumps(list(newer)), newest))
        cancels: dict[int, list[int]] = {}
        for pipeline_id, group in sorted(found.fetchall()):
            ids = newer[group]
            after = bisect.bisect_right(ids, pipeline_id)
            if after < len(ids):
                cancels.setdefault(ids[after], []).append(pipeline_id)
        return cancels

    def cancel_superseded(self, conn: sqlite3.Connection, cancels: Mapping[int, Sequence[int]], now: float,
                          planning_ended: list[int]) -> dict[int, list[Settlement]]:
        """Cancel the pipelines that new ones supersede (`cancels`: new pipeline -> the older ones, as superseded
        finds them), in the caller's transaction: new pipeline -> their settlements. The ones still planning go in
        one statement and are added to `planning_ended`, for the caller to write their outbox rows in one more
        (record_cancelled) where _cancel_pipeline writes each one's."""
        reason_of = {older: f"superseded by pipeline {newer}" for newer, olders in cancels.items() for older in olders}
        ids = list(reason_of)
        planning: set[int] = set()
        for start in range(0, len(ids), CANCEL_MANY):
            chunk = ids[start:start + CANCEL_MANY]
            statement = _CANCEL_PLANNING.format(reasons=" ".join(["WHEN ? THEN ?"] * len(chunk)))
            params = [value for pipeline_id in chunk for value in (pipeline_id, reason_of[pipeline_id])]
            planning.update(row[0] for row in conn.execute(statement, [*params, now, json.dumps(chunk)]))
        planning_ended += sorted(planning)
        return {newer: [Settlement(older, PipelineState.cancelled, reason=reason_of[older]) if older in planning
                        else self._cancel_pipeline(conn, older, reason_of[older]) for older in olders]
                for newer, olders in cancels.items()}
