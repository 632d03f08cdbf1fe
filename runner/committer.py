"""Group commit of webhook deliveries: the deliveries waiting at one moment share a transaction, on a thread of
their own that takes the next batch as soon as one committed."""

from __future__ import annotations

import asyncio
import queue as thread_queue
import threading
from typing import NamedTuple

from runner.models import JobSpec
from runner.queue import Delivery, NewDelivery, Queue

IDLE_SECONDS = 5.0  # the commit thread ends after this long without a delivery (a later one starts it again)


class _Waiting(NamedTuple):
    loop: asyncio.AbstractEventLoop
    queue: Queue
    delivery: NewDelivery
    future: asyncio.Future[Delivery]


class DeliveryCommitter:
    """Commits deliveries off the event loop, in one transaction for all the deliveries waiting at that moment.

    Under a burst, a transaction's commit costs more than recording a delivery, so the deliveries that arrive
    while one transaction runs go together in the next. The commit thread takes that next batch itself, at once:
    handing each batch over from the event loop (asyncio.to_thread) made every commit wait for the loop, busy
    with the requests that make the next batch, to pass it on, and the thread sat idle meanwhile. Alone, a
    delivery goes at once. Every caller gets its answer only after the transaction holding its delivery committed.
    """

    def __init__(self) -> None:
        self._waiting: thread_queue.SimpleQueue[_Waiting] = thread_queue.SimpleQueue()
        self._lock = threading.Lock()  # whether the thread runs: started by commit, ended by itself when idle
        self._thread: threading.Thread | None = None

    async def commit(self, queue: Queue, forge: str, delivery: str, specs: list[JobSpec], supersede: bool) -> Delivery:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Delivery] = loop.create_future()
        self._waiting.put(_Waiting(loop, queue, NewDelivery(forge, delivery, tuple(specs), supersede), future))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="forgeci-delivery-commit", daemon=True)
                self._thread.start()
        return await future

    def _run(self) -> None:
        """The commit thread: every delivery waiting when it looks, in one transaction, then the next ones."""
        while True:
            try:
                batch = [self._waiting.get(timeout=IDLE_SECONDS)]
            except thread_queue.Empty:
                with self._lock:  # commit() puts before it looks at the thread: an empty queue here stays ours
                    if self._waiting.empty():
                        self._thread = None
                        return
                continue
            while True:
                try:
                    batch.append(self._waiting.get_nowait())
                except thread_queue.Empty:
                    break
            try:
                outcomes: list[Delivery | BaseException] = list(_commit_all([(w.queue, w.delivery) for w in batch]))
            except BaseException as exc:  # noqa: BLE001 - answered to every caller of the batch, never lost
                outcomes = [exc] * len(batch)
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Delivery], Delivery | BaseException]]]
            by_loop = {}
            for waiting, outcome in zip(batch, outcomes):
                by_loop.setdefault(waiting.loop, []).append((waiting.future, outcome))
            for loop, answers in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_answer, answers)
                except RuntimeError:  # that loop closed meanwhile: nobody waits for these answers any more
                    pass


def _answer(answers: list[tuple[asyncio.Future[Delivery], Delivery | BaseException]]) -> None:
    """On the callers' event loop: each its outcome."""
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
