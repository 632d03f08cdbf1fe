"""Group commit of webhook deliveries: the deliveries waiting at one moment share a thread hop and a transaction."""

from __future__ import annotations

import asyncio

from runner.models import JobSpec
from runner.queue import Delivery, NewDelivery, Queue


class DeliveryCommitter:
    """Commits deliveries off the event loop, in one transaction for all the deliveries waiting at that moment.

    Under a burst, the hop to a worker thread and the commit cost more than recording a delivery, so the
    deliveries that arrive while one transaction runs go together in the next. Alone, a delivery goes at
    once. Every caller gets its answer only after the transaction holding its delivery committed.
    """

    def __init__(self) -> None:
        self._waiting: list[tuple[Queue, NewDelivery, asyncio.Future[Delivery]]] = []
        self._flushing = False

    async def commit(self, queue: Queue, forge: str, delivery: str, specs: list[JobSpec], supersede: bool) -> Delivery:
        future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self._waiting.append((queue, NewDelivery(forge, delivery, tuple(specs), supersede), future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                outcomes = await asyncio.to_thread(_commit_all, [(queue, new) for queue, new, _ in batch])
                for (_, _, future), outcome in zip(batch, outcomes):
                    if future.done():
                        continue  # the client went away; the delivery is committed all the same
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._flushing = False


def _commit_all(batch: list[tuple[Queue, NewDelivery]]) -> list[Delivery | Exception]:
    """One transaction per queue (an app has one); if it fails, each delivery alone, so a fault is its own."""
    outcomes: dict[int, Delivery | Exception] = {}
    by_queue: dict[int, list[int]] = {}
    for index, (queue, _) in enumerate(batch):
        by_queue.setdefault(id(queue), []).append(index)
    for indexes in by_queue.values():
        queue = batch[indexes[0]][0]
        try:
            for index, result in zip(indexes, queue.enqueue_deliveries([batch[i][1] for i in indexes])):
                outcomes[index] = result
        except Exception:
            for index in indexes:
                try:
                    outcomes[index] = queue.enqueue_deliveries([batch[index][1]])[0]
                except Exception as exc:  # answered to this delivery's request only
                    outcomes[index] = exc
    return [outcomes[index] for index in range(len(batch))]
