"""Group commit of webhook deliveries: the deliveries waiting at one moment share a transaction, on one thread."""

from __future__ import annotations

import asyncio
import threading

from runner.models import JobSpec
from runner.queue import Delivery, NewDelivery, Queue

_Waiting = tuple[Queue, NewDelivery, "asyncio.Future[Delivery]", asyncio.AbstractEventLoop]


class DeliveryCommitter:
    """Commits deliveries off the event loop, in one transaction for all the deliveries waiting at that moment.

    Under a burst, the hop to a worker thread and the commit cost more than recording a delivery, so the
    deliveries that arrive while one transaction runs go together in the next. The thread that committed one
    batch goes on with the next while there is one: the event loop wakes a thread only when none is
    committing (on a loaded machine, waking one cost the loop about a millisecond a batch, its core given to
    the woken thread). Alone, a delivery goes at once. Every caller gets its answer only after the transaction
    holding its delivery committed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _waiting and _draining, shared by the loop and the thread
        self._waiting: list[_Waiting] = []
        self._draining = False  # a thread is committing batches; it takes what waits before it stops

    async def commit(self, queue: Queue, forge: str, delivery: str, specs: list[JobSpec], supersede: bool) -> Delivery:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Delivery] = loop.create_future()
        with self._lock:
            self._waiting.append((queue, NewDelivery(forge, delivery, tuple(specs), supersede), future, loop))
            start, self._draining = not self._draining, True
        if start:
            try:
                loop.run_in_executor(None, self._drain)
            except BaseException:  # the executor is shut down: nothing drains, so the next caller must try again
                with self._lock:
                    self._waiting = [item for item in self._waiting if item[2] is not future]
                    self._draining = False
                raise
        return await future

    def _drain(self) -> None:
        """On a worker thread: commit what waits, batch after batch, until nothing does."""
        while True:
            with self._lock:
                batch, self._waiting = self._waiting, []
                if not batch:
                    self._draining = False
                    return
            try:
                outcomes = _commit_all([(queue, new) for queue, new, _, _ in batch])
            except BaseException as exc:  # noqa: BLE001 - not a delivery's own fault (those come back as outcomes)
                outcomes = [exc if isinstance(exc, Exception) else RuntimeError(repr(exc))] * len(batch)
            for loop in {item[3] for item in batch}:
                answers = [(future, outcome) for (_, _, future, of), outcome in zip(batch, outcomes) if of is loop]
                try:
                    loop.call_soon_threadsafe(_answer, answers)
                except RuntimeError:  # that loop is closed: nobody waits for these answers any more
                    pass


def _answer(answers: list[tuple[asyncio.Future[Delivery], Delivery | Exception]]) -> None:
    """On the event loop: each caller's outcome."""
    for future, outcome in answers:
        if future.done():
            continue  # the client went away; the delivery is committed all the same
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


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
