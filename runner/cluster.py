"""One coordinator's part of a cluster: its singletons, and (on PostgreSQL) the log hub and event bus that reach
the other coordinators through the database.

On SQLite a coordinator is alone (the data dir's lock): the in-process LogHub and EventBus, and every singleton
runs here. On PostgreSQL: one LISTEN connection (runner/cluster_events.py), log lines stored in chunks
(runner/cluster_logs.py), events sent as NOTIFY payloads, and each singleton under its advisory lock
(runner/queue/leader.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from runner.cluster_events import ClusterEventBus, ClusterListener
from runner.cluster_logs import ClusterLogHub
from runner.events import EventBus
from runner.logs import LogHub
from runner.queue import Queue
from runner.queue.leader import Singletons
from runner.worker import embedded_prefix

# The cluster's singletons (runner/queue/leader.py): each on one coordinator at a time.
MAINTENANCE, SCHEDULES, LEASE_EXPIRY, NOTIFY, STATUS = "maintenance", "schedules", "lease-expiry", "notify", "status"


@dataclass
class Cluster:
    singletons: Singletons
    hub: LogHub
    events: EventBus
    listener: ClusterListener | None = None

    @property
    def shared(self) -> bool:
        """True on PostgreSQL: other coordinators may share the queue."""
        return self.listener is not None


def conninfo_of(queue: Queue) -> str | None:
    """The PostgreSQL connection string of a PostgresQueue; None for SQLite."""
    value = getattr(queue, "conninfo", None)
    return value if isinstance(value, str) else None


def runner_prefix(queue: Queue, data_dir: Path) -> str:
    """What this coordinator's embedded runner ids start with. SQLite: the host's (one coordinator per queue).
    PostgreSQL: the host's and the data dir's too, so that a start-up requeues only the jobs a crashed run of this
    data dir left (the data dir's lock makes it the only live one), never those of another coordinator."""
    if conninfo_of(queue) is None:
        return embedded_prefix()
    tag = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return f"{embedded_prefix()}/{tag}"


def runner_id(prefix: str) -> str:
    return f"{prefix}/{os.getpid()}.{int(time.time() * 1000)}"


@asynccontextmanager
async def open_cluster(queue: Queue, lease: float = 15.0) -> AsyncIterator[Cluster]:
    """The cluster parts for `queue`; on PostgreSQL connected and listening before this yields."""
    conninfo = conninfo_of(queue)
    if conninfo is None:
        cluster = Cluster(Singletons(None), LogHub(), EventBus())
        try:
            yield cluster
        finally:
            await cluster.singletons.stop()
        return
    listener = ClusterListener(conninfo, lease)
    hub = ClusterLogHub(queue, listener)
    events = ClusterEventBus(conninfo, listener, lease=lease)
    cluster = Cluster(Singletons(conninfo, lease), hub, events, listener)
    await listener.start()
    try:
        await hub.start()
        await events.start()
        yield cluster
    finally:
        await cluster.singletons.stop()
        await hub.stop()
        await events.stop()
        await listener.stop()


@asynccontextmanager
async def singleton_service(cluster: Cluster | None, name: str, start: Callable[[], Awaitable[None]],
                            stop: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    """A service of the app (the notifier, the status reporter) for the context's lifetime: started here before
    the context is entered when this coordinator is alone (SQLite: it misses nothing the workers do), else run
    under the cluster singleton `name`, on whichever coordinator holds its lock for as long as it does."""
    if cluster is None or not cluster.shared:
        await start()
        try:
            yield
        finally:
            await stop()
        return

    async def hold() -> None:
        await start()
        try:
            await asyncio.Event().wait()
        finally:
            await stop()

    cluster.singletons.start(name, hold)
    try:
        yield
    finally:
        await cluster.singletons.stop((name,))
