"""Events across coordinators on one PostgreSQL queue: one LISTEN connection per coordinator, and an EventBus whose
events also reach the other coordinators' subscribers (live lists, /events, the dashboard).

Why NOTIFY payloads and no table: an event is a live hint ("job 7 is running now"), never a record; whoever
needs the truth reads the job's row (the status reporter reads the database's own feed of state changes,
bot/status/feed.py, and the log followers read log_chunks). A NOTIFY is delivered to every listener in commit
order and costs no rows to prune. A payload must stay under PostgreSQL's 8000 bytes: an event's own fields are
small; a long error text in its data is shortened (its row keeps the whole text).

A listener that reconnects may have missed notifications meanwhile: its `on_reconnect` callbacks run then (log
followers read the database again; a live list missed some states, as a slow subscriber of the in-process bus
does).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql as pgsql

from runner.events import Event, EventBus, JobEvent, PipelineEvent
from runner.queue.cluster import EVENT_CHANNEL, LOG_CHANNEL, STATUS_CHANNEL
from runner.queue.leader import connect_options

log = logging.getLogger(__name__)

CHANNELS = (EVENT_CHANNEL, LOG_CHANNEL, STATUS_CHANNEL)
MAX_PAYLOAD = 7900  # bytes: PostgreSQL refuses a NOTIFY payload of 8000 or more
SHORT_TEXT = 400  # characters a string in an oversized event's data is cut to
RECONNECT = 1.0
SEND_BATCH = 200  # events sent in one statement


class ClusterListener:
    """This coordinator's LISTEN connection: every cluster channel, each notification handed to the callbacks of
    its channel (on the event loop), reconnecting after a failure."""

    def __init__(self, conninfo: str, lease: float = 15.0) -> None:
        self.conninfo, self.lease = conninfo, lease
        self.connected = asyncio.Event()
        self._callbacks: dict[str, list[Callable[[str], None]]] = {channel: [] for channel in CHANNELS}
        self._reconnected: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None

    def on(self, channel: str, callback: Callable[[str], None]) -> None:
        self._callbacks[channel].append(callback)

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        self._reconnected.append(callback)

    async def start(self, timeout: float = 10.0) -> None:
        """Connect and LISTEN before returning (so nothing sent after start is missed), then listen on."""
        self._task = asyncio.create_task(self._run(), name="forgeci-cluster-listener")
        await asyncio.wait_for(self.connected.wait(), timeout)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        first = True
        while True:
            try:
                options = connect_options(self.lease)
                async with await psycopg.AsyncConnection.connect(self.conninfo, **options) as conn:
                    for channel in CHANNELS:
                        await conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(channel)))
                    self.connected.set()
                    if not first:
                        log.info("cluster listener: connected again")
                        for callback in self._reconnected:
                            callback()
                    first = False
                    async for notify in conn.notifies():
                        for callback in self._callbacks.get(notify.channel, ()):
                            try:
                                callback(notify.payload)
                            except Exception:  # one bad callback must not end the listening of every other
                                log.exception("cluster listener: callback of %s failed", notify.channel)
            except (psycopg.Error, OSError) as exc:
                log.warning("cluster listener: %s; connecting again", str(exc).strip().splitlines()[0:1])
            self.connected.clear()
            await asyncio.sleep(RECONNECT)


def event_payload(event: Event, origin: str) -> str:
    """An event as a NOTIFY payload (JSON under MAX_PAYLOAD bytes; long data strings shortened)."""
    body: dict[str, Any] = {"o": origin, "k": event.kind, "s": event.state, "d": event.data, "t": event.t}
    body["p" if isinstance(event, PipelineEvent) else "j"] = (
        event.pipeline_id if isinstance(event, PipelineEvent) else event.job_id)
    text = json.dumps(body, separators=(",", ":"), default=str)
    if len(text.encode()) > MAX_PAYLOAD:
        body["d"] = {key: value[:SHORT_TEXT] + "..." if isinstance(value, str) and len(value) > SHORT_TEXT else value
                     for key, value in event.data.items()}
        text = json.dumps(body, separators=(",", ":"), default=str)
        if len(text.encode()) > MAX_PAYLOAD:
            body["d"] = {}
            text = json.dumps(body, separators=(",", ":"))
    return text


def event_of(payload: str) -> tuple[str, Event] | None:
    """(origin, event) of a payload; None when it is not one of ours."""
    try:
        body = json.loads(payload)
        if "p" in body:
            return body["o"], PipelineEvent(int(body["p"]), str(body["s"]), dict(body["d"]), float(body["t"]))
        return body["o"], JobEvent(int(body["j"]), str(body["s"]), str(body["k"]), dict(body["d"]), float(body["t"]))
    except (ValueError, KeyError, TypeError):
        return None


class ClusterEventBus(EventBus):
    """The in-process bus, plus: what is published here is sent to the other coordinators, and what they publish
    reaches the subscribers here. Publishing never waits for the database (a sender task batches)."""

    def __init__(self, conninfo: str, listener: ClusterListener, maxsize: int = 1000, lease: float = 15.0) -> None:
        super().__init__(maxsize)
        self.conninfo, self.lease = conninfo, lease
        self.origin = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._outgoing: list[str] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        listener.on(EVENT_CHANNEL, self._received)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._send(), name="forgeci-cluster-events")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def publish(self, event: Event) -> None:
        super().publish(event)
        if len(self._outgoing) < 100 * SEND_BATCH:  # the database is gone for long: live views miss events
            self._outgoing.append(event_payload(event, self.origin))
            self._wake.set()

    def _received(self, payload: str) -> None:
        found = event_of(payload)
        if found is not None and found[0] != self.origin:
            super().publish(found[1])

    async def _send(self) -> None:
        while True:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await psycopg.AsyncConnection.connect(self.conninfo, **connect_options(self.lease))
                while True:
                    await self._wake.wait()
                    self._wake.clear()
                    while self._outgoing:
                        batch = self._outgoing[:SEND_BATCH]
                        # unnest yields in array order, so the others see the events in the order published
                        await conn.execute("SELECT pg_notify(%s, x) FROM unnest(%s::text[]) AS x",
                                           (EVENT_CHANNEL, batch))
                        del self._outgoing[:len(batch)]
            except (psycopg.Error, OSError) as exc:
                log.warning("cluster events: cannot send (%s); trying again", str(exc).strip().splitlines()[0:1])
            finally:
                if conn is not None:
                    await conn.close()
            await asyncio.sleep(RECONNECT)
