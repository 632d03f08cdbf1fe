"""Assembles the runner from settings: data folders, Podman service and engine, queue, logs, executor, workers."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from config.settings import Settings
from runner.cache import CacheManager
from runner.events import EventBus
from runner.executor import Executor
from runner.layout import DataLayout
from runner.logs import LogHub
from runner.maintenance import maintenance_loop
from runner.podman import Engine, PodmanService
from runner.podman_user import PodmanUser
from runner.queue import Queue
from runner.snapshot import Snapshots
from runner.store import ObjectStore, open_store
from runner.worker import WorkerPool
from runner.workspace import Workspaces

log = logging.getLogger(__name__)

WATCHDOG_INTERVAL = 2.0  # seconds between liveness checks of the Podman service we started


@dataclass
class Runtime:
    """Everything a running forgeci needs below the HTTP layer; `open_runtime` builds and tears it down."""

    settings: Settings
    layout: DataLayout
    user: PodmanUser
    service: PodmanService | None
    engine: Engine
    queue: Queue
    hub: LogHub
    events: EventBus
    executor: Executor
    store: ObjectStore
    cache: CacheManager
    snapshots: Snapshots
    pool: WorkerPool | None = None


@asynccontextmanager
async def open_runtime(
    settings: Settings, environ: Mapping[str, str] = os.environ, *, workers: bool = True
) -> AsyncIterator[Runtime]:
    """Start the Podman service (unless `runner.podman_url` names one), the queue and, with `workers`, the pool."""
    user = PodmanUser.resolve(settings.runner.podman_user)
    layout = DataLayout(settings.data_dir)
    layout.create(user)
    service: PodmanService | None = None
    url = settings.runner.podman_url
    if not url:
        service = PodmanService(user, layout.podman)
        await asyncio.to_thread(service.start)
        url = service.url
    engine = Engine(url, instance=str(layout.root))
    queue = Queue(layout.db, max_concurrent=settings.queue.max_concurrent, max_retries=settings.queue.max_retries)
    hub = LogHub()
    events = EventBus()
    git_token = environ.get(settings.git.token_env) or None
    workspaces = Workspaces(layout.workspaces, layout.mirrors, user, git_token)
    # No request to the store here: a store that is down must not stop forgeci (jobs run without caches).
    store = open_store(settings, environ)
    cache = CacheManager(store, queue, user)
    snapshots = Snapshots(store, queue, user)
    executor = Executor(settings, engine, workspaces, layout, hub, environ, cache=cache, snapshots=snapshots)
    runtime = Runtime(settings, layout, user, service, engine, queue, hub, events, executor, store, cache, snapshots)
    watchdog = asyncio.create_task(_watch(service)) if service is not None else None
    maintenance: asyncio.Task[None] | None = None
    try:
        if workers:
            runtime.pool = WorkerPool(queue, executor, max_concurrent=settings.queue.max_concurrent,
                                      lease_seconds=settings.queue.lease_seconds, events=events)
            await runtime.pool.start()
            maintenance = asyncio.create_task(maintenance_loop(runtime), name="forgeci-maintenance")
        yield runtime
    finally:
        if maintenance is not None:
            maintenance.cancel()
            await asyncio.gather(maintenance, return_exceptions=True)
        if runtime.pool is not None:
            await runtime.pool.stop()
        if watchdog is not None:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
        engine.close()
        if service is not None:
            await asyncio.to_thread(service.stop)
        store.close()
        queue.close()


async def _watch(service: PodmanService) -> None:
    """Restart the Podman service when it dies; jobs it took down go back to the queue as infra faults."""
    while True:
        await asyncio.sleep(WATCHDOG_INTERVAL)
        try:
            await asyncio.to_thread(service.ensure)
        except Exception as exc:  # keep watching: the next round may succeed
            log.error("could not restart the Podman service: %s", exc)
