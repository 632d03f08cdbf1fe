"""The deliveries table (migrations 3, 5): a forge delivery and the pipelines it makes, in one transaction."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from runner.models import JobSpec, JobState
from runner.queue.jobs import CANCEL
from runner.queue.pipelines import PipelineQueries, Settlement

_SUPERSEDED = "concurrency_group = :group AND id < :before AND NOT cancel_requested"
_DELIVERY_PIPELINES = "SELECT coalesce(pipeline_ids, '[]'), job_ids FROM deliveries WHERE forge = ? AND delivery_id = ?"
_RECORD_DELIVERY = "INSERT INTO deliveries (forge, delivery_id, pipeline_ids, received_at) VALUES (?, ?, ?, ?)"
_JOBS_OF = "SELECT id FROM jobs WHERE pipeline_id IN (SELECT value FROM json_each(?)) ORDER BY id"
_PRUNE_DELIVERIES = "DELETE FROM deliveries WHERE received_at < ?"
# Unfinished jobs of no pipeline (queued before pipelines existed, or a job's retry): rare, and looking for them in a
# concurrency group walks every active job, so a transaction looks once whether there are any at all.
_LOOSE_JOBS = ("SELECT 1 FROM jobs INDEXED BY jobs_active WHERE state IN ('queued', 'running') "
               "AND pipeline_id IS NULL LIMIT 1")
_CANCEL_LOOSE = CANCEL.format(where=_SUPERSEDED + " AND pipeline_id IS NULL")
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
            for delivery in deliveries:
                results.append(self._record_delivery(conn, delivery, now, settlements, loose))
            if any(r.pipeline_ids and r.pipeline_ids[0] % PRUNE_EVERY == 0 for r in results if not r.redelivery):
                conn.execute(_PRUNE_DELIVERIES, (now - DELIVERY_MEMORY,))  # now and then keeps the table small
        for settled in settlements:  # kept only once the transaction committed
            self._settled(settled)
        return results

    def _record_delivery(self, conn: sqlite3.Connection, delivery: NewDelivery, now: float,
                         settlements: list[Settlement], loose: bool) -> Delivery:
        seen = conn.execute(_DELIVERY_PIPELINES, (delivery.forge, delivery.delivery_id)).fetchone()
        if seen is not None:
            pipelines = tuple(json.loads(seen[0]))
            jobs = [r[0] for r in conn.execute(_JOBS_OF, (seen[0],))] if pipelines else json.loads(seen[1])
            return Delivery(pipelines, redelivery=True, job_ids=tuple(jobs))
        pipeline_ids = [self._create_pipeline(conn, spec, now) for spec in delivery.specs]
        cancelled: list[int] = []
        stopping: list[int] = []
        superseded: list[int] = []
        loose: dict[str, list[int]] = {JobState.cancelled: [], JobState.running: []}
        for spec, pipeline_id in zip(delivery.specs, pipeline_ids):
            if delivery.supersede and spec.concurrency_group is not None:
                for settled in self.supersede(conn, spec.concurrency_group, pipeline_id):
                    superseded.append(settled.pipeline_id)
                    cancelled += settled.cancelled
                    stopping += settled.stopping
                    settlements.append(settled)
                if loose:  # jobs of no pipeline in the group go too
                    params = {"group": spec.concurrency_group, "before": 2**62, "now": now}
                    for old_id, state in conn.execute(_CANCEL_LOOSE, params).fetchall():
                        loose[JobState.cancelled if state == JobState.cancelled else JobState.running].append(old_id)
        conn.execute(_RECORD_DELIVERY, (delivery.forge, delivery.delivery_id, json.dumps(pipeline_ids), now))
        loose_cancelled, loose_stopping = loose[JobState.cancelled], loose[JobState.running]
        return Delivery(tuple(pipeline_ids), False, tuple(sorted(cancelled + loose_cancelled)),
                        tuple(sorted(stopping + loose_stopping)), superseded=tuple(superseded),
                        loose_cancelled=tuple(sorted(loose_cancelled)), loose_stopping=tuple(sorted(loose_stopping)))
