"""Job logs across coordinators on one PostgreSQL queue: every line also goes to the `log_chunks` table, and a
follower on any coordinator reads the chunks, woken by a NOTIFY carrying the job id.

Why the database and not the log files: a job's lines are written by the coordinator that runs it (its embedded
worker) or that receives its agent's batches, into that coordinator's data dir; another coordinator cannot read
that file unless every data dir is one shared file system, which forgeci would then have to require and which
a load-balanced installation rarely has. The chunks are small (JSON Lines batched every SHIP_EVERY seconds, one
INSERT per batch and job), are pruned with their jobs, and make a job's whole log, over attempts run on different
coordinators, one sequence of numbers. The local file stays as it is (the coordinator's own copy: crash-safe
before the next batch ships, read by its own tools). On SQLite none of this runs: LogHub as ever.

A crash of a coordinator loses at most the lines of its last SHIP_EVERY seconds from the database (its file
keeps them); a database that is down holds lines back, up to MAX_PENDING per job, and they go when it is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from runner.cluster_events import ClusterListener
from runner.errors import QueueError
from runner.logs import FOLLOW_QUEUE, POLL, LogHub, LogLine
from runner.queue import Queue
from runner.queue.cluster import LOG_CHANNEL

log = logging.getLogger(__name__)

SHIP_EVERY = 0.1  # seconds between two batches of a job's new lines to the database
MAX_PENDING = 100_000  # lines of one job held back while the database is down; older ones are dropped first
RETRY = 1.0


class ClusterLogHub(LogHub):
    """A LogHub whose lines also go to the database and whose followers read them from there."""

    def __init__(self, queue: Queue, listener: ClusterListener, queue_size: int = FOLLOW_QUEUE,
                 poll: float = POLL) -> None:
        super().__init__(queue_size, poll)
        self.queue = queue
        self._pending: dict[int, list[LogLine]] = {}
        self._ship = asyncio.Event()
        self._wakes: dict[int, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        listener.on(LOG_CHANNEL, self._notified)
        listener.on_reconnect(self._wake_all)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._shipper(), name="forgeci-log-shipper")

    async def stop(self) -> None:
        """Ship what is pending (briefly), then stop."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await asyncio.wait_for(self._ship_all(), 5.0)
        except (QueueError, TimeoutError) as exc:
            log.warning("log lines of %d job(s) not stored in the database at shutdown: %s", len(self._pending), exc)

    # -- writing --------------------------------------------------------------------------------------------------

    def publish(self, job_id: int, line: LogLine) -> None:
        super().publish(job_id, line)
        pending = self._pending.setdefault(job_id, [])
        pending.append(line)
        if len(pending) > MAX_PENDING:
            del pending[: len(pending) - MAX_PENDING]
        self._ship.set()

    def finish(self, job_id: int) -> None:
        """The log is complete: its last lines go to the database now, in the loop's thread (one INSERT), so they
        are stored before the job's end is recorded, and a follower elsewhere that sees the end finds them."""
        lines = self._pending.pop(job_id, None)
        if lines:
            try:
                self.queue.add_log_chunk(job_id, _consecutive(lines))
            except QueueError as exc:
                log.warning("job %d: its last log lines are not stored in the database yet: %s", job_id, exc)
                self._pending[job_id] = lines + self._pending.get(job_id, [])
                self._ship.set()
        super().finish(job_id)

    def last_number(self, job_id: int) -> int:
        pending = self._pending.get(job_id)
        if pending:
            return pending[-1].n
        try:
            return self.queue.log_last(job_id)
        except QueueError as exc:
            log.warning("job %d: cannot read its last log line number from the database: %s", job_id, exc)
            return 0

    async def _shipper(self) -> None:
        while True:
            await self._ship.wait()
            self._ship.clear()
            try:
                await self._ship_all()
            except QueueError as exc:
                log.warning("log lines not stored in the database yet: %s", exc)
                await asyncio.sleep(RETRY)
                self._ship.set()
                continue
            await asyncio.sleep(SHIP_EVERY)  # what arrives meanwhile goes in the next batch, one INSERT per job

    async def _ship_all(self) -> None:
        for job_id in list(self._pending):
            lines = self._pending.get(job_id)
            if not lines:
                self._pending.pop(job_id, None)
                continue
            batch = list(lines)
            await asyncio.to_thread(self.queue.add_log_chunk, job_id, _consecutive(batch))
            del lines[: len(batch)]
            if not lines:
                self._pending.pop(job_id, None)

    # -- reading --------------------------------------------------------------------------------------------------

    def read(self, job_id: int, path: Path, after: int = 0) -> list[LogLine]:
        return self.queue.log_lines(job_id, after)

    def _notified(self, payload: str) -> None:
        if payload.isdigit():
            for wake in self._wakes.get(int(payload), ()):
                wake.set()

    def _wake_all(self) -> None:
        for wakes in self._wakes.values():
            for wake in wakes:
                wake.set()

    async def follow(self, job_id: int, path: Path, after: int = 0, *,
                     done: Callable[[], bool]) -> AsyncIterator[LogLine]:
        """Every line with n > after, once and in order, from the database (whichever coordinator wrote it); ends
        once the job is terminal and a read after that found nothing new."""
        last = after
        wake = asyncio.Event()
        self._wakes.setdefault(job_id, set()).add(wake)
        try:
            while True:
                wake.clear()  # before the read: a chunk stored during it wakes the next wait at once
                finished = await asyncio.to_thread(done)
                lines = await asyncio.to_thread(self.queue.log_lines, job_id, last)
                for line in lines:
                    last = line.n
                    yield line
                if finished and not lines and job_id not in self._pending:
                    return
                if lines:
                    continue
                try:
                    await asyncio.wait_for(wake.wait(), self._poll)
                except TimeoutError:
                    pass
        finally:
            wakes = self._wakes.get(job_id)
            if wakes is not None:
                wakes.discard(wake)
                if not wakes:
                    del self._wakes[job_id]


def _consecutive(lines: list[LogLine]) -> list[LogLine]:
    """A chunk's lines: numbered one after another (the log writers number them so; a gap here would be a bug, and
    the chunk still stores what it has)."""
    return sorted(lines, key=lambda line: line.n)
