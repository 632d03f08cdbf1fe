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
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._maxsize = maxsize

    def publish(self, event: Event) -> None:
        """Call from the event loop thread."""
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()  # a live list wants the newest state; an old one is superseded anyway
            queue.put_nowait(event)

    async def subscribe(self) -> AsyncIterator[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue(self._maxsize)
        self._subscribers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(queue)

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
