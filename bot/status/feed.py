"""The status reporter's events on PostgreSQL: the database's own feed of job and pipeline state changes.

With several coordinators a job's changes happen on whichever coordinator runs it or hears from its agent, so no
coordinator's in-process events see them all. Triggers write a `status_changes` row for every state change in the
transaction that makes it (runner/queue/schema.py), and NOTIFY. The one coordinator that holds the `status`
singleton (runner/queue/leader.py) reads them in the order the database numbered them, turns each into the event
the reporter already understands, and marks them offered. The reporter reads each job's and pipeline's current
state before it posts and posts one commit's context one update at a time, newest only: since only one process
posts, a context is never posted out of order, whichever coordinator made the changes.

Steps are not state changes: "Running step 2/3: build" comes from the step events of the cluster's event bus
(runner/cluster_events.py, every coordinator's events through NOTIFY), yielded between batches of changes. They
are hints: one lost leaves the coarser "Running", and one for a job that has moved on is dropped by the reporter,
which posts only what matches the job's current state.

A coordinator that takes the singleton over first offers again what was offered in the last TAKEOVER seconds (the
previous holder may have died with those posts queued or retrying); a status posted twice is harmless.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from runner.cluster_events import ClusterListener
from runner.events import Event, EventBus, JobEvent, PipelineEvent
from runner.queue import Queue, StatusChange
from runner.queue.cluster import STATUS_CHANNEL

BATCH = 500
POLL = 2.0  # seconds between looks at the table when no NOTIFY comes (one lost while reconnecting)
KEEP = 600.0  # seconds an offered change is kept (a takeover offers the recent ones again)


def event_of(change: StatusChange) -> Event:
    if change.job_id is not None:
        return JobEvent(change.job_id, change.state)
    assert change.pipeline_id is not None
    return PipelineEvent(change.pipeline_id, change.state)


class DatabaseFeed:
    """Call it for an iterator of events (the reporter's `feed`); it runs until cancelled."""

    def __init__(self, queue: Queue, listener: ClusterListener, *, events: EventBus | None = None,
                 takeover: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        self.queue, self.events, self.takeover, self.clock = queue, events, takeover, clock
        self._wake = asyncio.Event()
        self._steps: list[JobEvent] = []  # step events since the last batch, oldest first
        listener.on(STATUS_CHANNEL, lambda _: self._wake.set())
        listener.on_reconnect(self._wake.set)

    async def __call__(self) -> AsyncIterator[Event]:
        follower = asyncio.create_task(self._follow_steps()) if self.events is not None else None
        try:
            async for event in self._changes():
                yield event
        finally:
            if follower is not None:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)

    async def _changes(self) -> AsyncIterator[Event]:
        for change in await asyncio.to_thread(self.queue.recent_status_changes, self.clock() - self.takeover):
            yield event_of(change)
        while True:
            self._wake.clear()
            changes = await asyncio.to_thread(self.queue.status_changes, BATCH)
            for change in changes:
                yield event_of(change)  # the reporter has handled it when the next one is asked for
            if changes:
                await asyncio.to_thread(self.queue.status_changes_done, [c.id for c in changes], self.clock() - KEEP)
            steps, self._steps = self._steps, []
            for step in steps:
                yield step
            if len(changes) == BATCH:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), POLL)
            except TimeoutError:
                pass

    async def _follow_steps(self) -> None:
        assert self.events is not None
        async for event in self.events.subscribe(JobEvent):
            if isinstance(event, JobEvent) and event.kind == "step" and len(self._steps) < BATCH:
                self._steps.append(event)
                self._wake.set()
