"""The deliveries table (migration 3): a forge delivery and the jobs it makes, recorded in one transaction."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runner.models import JobSpec, JobState
from runner.queue.base import QueueBase
from runner.queue.jobs import CANCEL, ENQUEUE, spec_json

_SUPERSEDED = "concurrency_group = :group AND id < :before AND NOT cancel_requested"
_DELIVERY_JOBS = "SELECT job_ids FROM deliveries WHERE forge = ? AND delivery_id = ?"
_RECORD_DELIVERY = "INSERT INTO deliveries (forge, delivery_id, job_ids, received_at) VALUES (?, ?, ?, ?)"
_PRUNE_DELIVERIES = "DELETE FROM deliveries WHERE received_at < ?"
# Forges redeliver for a few days (GitHub: 3); a delivery older than this is answered as a new one.
DELIVERY_MEMORY = 7 * 86400.0
PRUNE_EVERY = 64  # deliveries between two prunings of the deliveries table


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


class DeliveryQueries(QueueBase):
    """Webhook intake (runner.committer): deliveries and their jobs, redeliveries answered from the table."""

    def enqueue_deliveries(self, deliveries: Sequence[NewDelivery]) -> list[Delivery]:
        """Record forge deliveries and enqueue their jobs, in order, in one transaction (all or nothing).

        A burst shares one commit. A redelivery of a (forge, delivery_id) enqueues nothing and returns the jobs
        it made the first time. With `supersede`, each new job cancels (as cancel does) the older unfinished jobs
        of its concurrency group, in the same transaction.
        """
        rows = [
            [(spec.repo, spec.ref, spec.sha, spec.event, spec.priority, spec.concurrency_group, spec.fork,
              spec.pr_number, spec.base_ref, None if spec.pipeline is None else spec_json(spec.pipeline, "pipeline"),
              spec_json(spec.env, "env"), spec_json(spec.meta, "meta"))
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
        job_ids: list[int] = [conn.execute(ENQUEUE, (*row, now)).lastrowid for row in rows]  # type: ignore[misc]
        cancelled: list[int] = []
        stopping: list[int] = []
        for spec, job_id in zip(delivery.specs, job_ids):
            if delivery.supersede and spec.concurrency_group is not None:
                params = {"group": spec.concurrency_group, "before": job_id, "now": now}
                for old_id, state in conn.execute(CANCEL.format(where=_SUPERSEDED), params).fetchall():
                    (cancelled if state == JobState.cancelled else stopping).append(old_id)
        conn.execute(_RECORD_DELIVERY, (delivery.forge, delivery.delivery_id, json.dumps(job_ids), now))
        return Delivery(tuple(job_ids), False, tuple(sorted(cancelled)), tuple(sorted(stopping)))

