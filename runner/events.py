"""In-process pub/sub of job events (state changes and step progress) for live lists and status reporters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class JobEvent:
    """A job changed state, or moved to another step; `data` carries what a list or a status needs."""

    job_id: int
    state: str
    kind: str = "state"  # "state" or "step"
    data: dict[str, Any] = field(default_factory=dict)
    t: float = field(default_factory=time.time)


class EventBus:
    """Fan-out to subscribers with bounded queues; a subscriber that cannot keep up loses the oldest events."""

    def __init__(self, maxsize: int = 1000) -> None:
        # Each subscriber's queue, with the event types it wants (None: all).
        self._subscribers: dict[asyncio.Queue[Event], type | tuple[type, ...] | None] = {}
        self._maxsize = maxsize

    def publish(self, event: Event) -> None:
        """Call from the event loop thread."""
        for queue, wanted in self._subscribers.items():
            if wanted is not None and not isinstance(event, wanted):
                continue  # no wake-up of a task that would drop it (a webhook publishes two pipeline events)
            if queue.full():
                queue.get_nowait()  # a live list wants the newest state; an old one is superseded anyway
            queue.put_nowait(event)

    async def subscribe(self, only: type | tuple[type, ...] | None = None) -> AsyncIterator[Event]:
        """Every event from now on, or `only` those of that type (or types)."""
        queue: asyncio.Queue[Event] = asyncio.Queue(self._maxsize)
        self._subscribers[queue] = only
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.pop(queue, None)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)


@dataclass(frozen=True)
class PipelineEvent:
    """A pipeline changed state (planned, started, finished); for the pipeline's commit status and live views."""

    pipeline_id: int
    state: str
    data: dict[str, Any] = field(default_factory=dict)
    t: float = field(default_factory=time.time)
    kind: str = "pipeline"


Event = JobEvent | PipelineEvent
