"""The PostgreSQL queue's wake-ups: a thread LISTENing on the queue's channel, reconnecting when the server goes.

A PostgresQueue transaction that wrote jobs NOTIFYs at its commit (runner.queue.postgres_queue), whichever process
committed it; this thread turns each burst of those into one `wake()` of the worker pool, so a job another process
enqueued (or whose needs another coordinator finished) is claimed at once, not at the claim loop's next poll. The
in-process wake-ups stay: they cost nothing and do not wait for the round trip.

When the connection breaks (PostgreSQL restarted, a failover, the network) the thread reconnects with a back-off
and wakes the pool once it is back: NOTIFYs sent while nobody listened are lost, so the claim loop must look.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

POLL = 1.0  # seconds one wait lasts: how soon `stop()` is noticed
BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)  # seconds between reconnection attempts (the last one repeats)


class Listening(Protocol):
    def wait(self, timeout: float) -> bool: ...

    def close(self) -> None: ...


class ListenWakeups:
    """`connect()` makes a LISTENing connection (PostgresQueue.listener); `wake` is called from this thread (give
    it a thread-safe one, e.g. `loop.call_soon_threadsafe(pool.wake)`)."""

    def __init__(self, connect: Callable[[], Listening], wake: Callable[[], None]) -> None:
        self._connect = connect
        self._wake = wake
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()  # set while a connection listens (tests wait for it)
        self.reconnects = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="forgeci-listen", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = POLL * 5) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                listener = self._connect()
            except Exception as exc:  # psycopg.OperationalError, a QueueError: the server is away
                if failures == 0:
                    log.warning("queue wake-ups: cannot LISTEN (%s); retrying", _first_line(exc))
                self._stop.wait(BACKOFF[min(failures, len(BACKOFF) - 1)])
                failures += 1
                continue
            if failures or self.reconnects:
                log.info("queue wake-ups: listening again")
            failures = 0
            self.connected.set()
            self._safe_wake()  # whatever was committed while nobody listened
            try:
                self._listen(listener)
            except Exception as exc:  # the connection broke
                log.warning("queue wake-ups: the LISTEN connection broke (%s); reconnecting", _first_line(exc))
                self.reconnects += 1
            finally:
                self.connected.clear()
                try:
                    listener.close()
                except Exception:  # already broken: nothing to close cleanly
                    pass

    def _listen(self, listener: Listening) -> None:
        while not self._stop.is_set():
            if listener.wait(POLL):
                self._safe_wake()

    def _safe_wake(self) -> None:
        try:
            self._wake()
        except RuntimeError:  # the event loop closed under us (the server stops): nothing to wake
            self._stop.set()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
