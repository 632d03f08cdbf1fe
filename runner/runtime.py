"""Assembles the runner from settings: data folders, the engine, queue, job control, logs, executor, workers."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from config.settings import Settings
from runner.artifacts import ArtifactManager
from runner.cache import CacheManager
from runner.cluster import LEASE_EXPIRY, MAINTENANCE, SCHEDULES, Cluster, open_cluster, runner_id, runner_prefix
from runner.control import JobControl
from runner.engine import Engine
from runner.events import EventBus
from runner.errors import InstanceLocked, QueueError
from runner.executor import Executor
from runner.image_build import ImageBuilder
from runner.layout import DataLayout
from runner.logs import LogHub
from runner.maintenance import maintenance_loop, prune_local
from runner.planner import Planner
from runner.podman import PodmanEngine
from runner.podman_shared import SharedPodmanService, shared_service_dir
from runner.podman_user import PodmanUser
from runner.backend import listen_wakeups, open_queue
from runner.queue import Queue
from runner.scheduler import Scheduler
from runner.snapshot import Snapshots
from runner.store import ObjectStore, open_store
from runner.worker import WorkerPool
from runner.warm_pool import POOL_JOB_ID, WarmPool
from runner.wakeups import ListenWakeups
from runner.workspace import Workspaces

log = logging.getLogger(__name__)

@dataclass
class Runtime:
    """Everything a running forgeci needs below the HTTP layer; `open_runtime` builds and tears it down."""

    settings: Settings
    layout: DataLayout
    engine: Engine
    queue: Queue
    control: JobControl
    hub: LogHub
    events: EventBus
    executor: Executor
    store: ObjectStore
    cache: CacheManager
    snapshots: Snapshots
    planner: Planner
    pool: WorkerPool | None = None
    _maintenance: asyncio.Task[None] | None = None
    _planning: asyncio.Task[None] | None = None
    artifacts: ArtifactManager | None = None
    scheduler: Scheduler | None = None  # the [[schedules]]; it runs with the workers (the data dir's coordinator)
    _scheduling: asyncio.Task[None] | None = None
    _expiry: asyncio.Task[None] | None = None
    cluster: Cluster | None = None  # the singletons; on PostgreSQL also the log hub and bus other coordinators share
    _listening: ListenWakeups | None = None
    # Called on the loop whenever the queue may have claimable work from another process (PostgreSQL's NOTIFY):
    # the embedded pool's wake, and whoever else waits for work (the agent API's long polls).
    wake_hooks: list[Callable[[], None]] = field(default_factory=list)

    @property
    def user(self) -> PodmanUser:
        return self.engine.user

    @property
    def images(self) -> ImageBuilder:
        """The repository images of this instance (maintenance prunes them)."""
        return self.executor.images

    async def start_workers(self) -> None:
        """Requeue what a crashed run of this instance left running, then claim jobs; and prune hourly."""
        if self.pool is not None:
            return
        settings = self.settings
        assert self.cluster is not None
        shared, lease = self.cluster.shared, settings.queue.lease_seconds
        if not shared:  # on PostgreSQL the lease expiry's holder does it as it takes over (expiry_loop)
            # Agents that kept running through our restart get one lease length to report before expiry.
            await asyncio.to_thread(self.queue.extend_agent_leases, time.time() + lease)
        prefix = runner_prefix(self.queue, self.layout.root)
        self.pool = WorkerPool(self.control, self.executor, max_concurrent=settings.queue.max_concurrent,
                               lease_seconds=lease, labels=settings.runner.labels, runner_id=runner_id(prefix),
                               orphan_prefix=prefix, expire_leases=not shared)
        self.wake_hooks.append(self.pool.wake)
        if settings.runner.embedded:
            await self.pool.start()  # its reap removes the containers of a crashed server's warm pool (job id 0)
            if settings.runner.warm_pool > 0:
                await self._start_warm_pool()
        else:
            await self.control.settle_all()
        # The cluster's singletons: here, or on whichever coordinator holds their lock (runner/queue/leader.py).
        singletons = self.cluster.singletons
        singletons.start(LEASE_EXPIRY, lambda: expiry_loop(self.control, lease, extend_first=shared))
        singletons.start(MAINTENANCE, lambda: maintenance_loop(self))
        if self.scheduler is not None:
            singletons.start(SCHEDULES, self.scheduler.run)
        self._planning = asyncio.create_task(self.planner.run(), name="forgeci-planner")
        if shared:  # this data dir's own files (orphaned logs, built images): every coordinator prunes its own
            self._maintenance = asyncio.create_task(maintenance_loop(self, work=prune_local), name="forgeci-local")
        self._start_listening()

    def _start_listening(self) -> None:
        """PostgreSQL: a LISTEN thread runs the wake hooks at other processes' commits (runner.backend)."""
        loop = asyncio.get_running_loop()

        def woken() -> None:
            for hook in list(self.wake_hooks):
                hook()

        self._listening = listen_wakeups(self.queue, lambda: loop.call_soon_threadsafe(woken))
        if self._listening is not None:
            self._listening.start()

    async def _start_warm_pool(self) -> None:
        """`runner.warm_pool` containers of the default image, for the embedded workers (runner/warm_pool.py)."""
        executor, runner = self.executor, self.settings.runner
        executor.warm = WarmPool(self.engine, self.layout.workspaces, runner.warm_pool,
                                 lambda folder: executor.container_spec(POOL_JOB_ID, runner.image, folder))
        await executor.warm.start()

    async def stop_workers(self, grace: float | None = None) -> None:
        """Stop claiming; running jobs get `grace` (default `runner.shutdown_grace`) to finish, then go back to
        the queue."""
        for task in (self._maintenance, self._planning, self._scheduling, self._expiry):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._maintenance = self._planning = self._scheduling = self._expiry = None
        if self.cluster is not None:
            await self.cluster.singletons.stop((LEASE_EXPIRY, MAINTENANCE, SCHEDULES))
        if self._listening is not None:
            await asyncio.to_thread(self._listening.stop)
            self._listening = None
        if self.pool is not None:
            await self.pool.stop(self.settings.runner.shutdown_grace if grace is None else grace)
        if self.executor.warm is not None:
            await self.executor.warm.close()
            self.executor.warm = None


async def expiry_loop(control: JobControl, lease_seconds: float, *, extend_first: bool = False) -> None:
    """The lease expiry (agents' jobs too, and with `runner.embedded = false`): a cluster singleton. With
    `extend_first` (a coordinator taking it over on PostgreSQL), agents first get one lease to report: the one
    they talked to may be the coordinator that just died."""
    if extend_first:
        await asyncio.to_thread(control.queue.extend_agent_leases, time.time() + lease_seconds)
    while True:
        try:
            await control.expire_leases()
        except QueueError as exc:
            log.error("queue error while expiring leases: %s", exc)
        await asyncio.sleep(max(0.5, min(5.0, lease_seconds / 3)))


class DataDirLock:
    """An exclusive flock on `<data_dir>/serve.lock`, held while `forgeci serve` runs; it names the holder's pid.

    Only the holder runs embedded workers on the data dir's queue, so at start it may requeue every job an
    embedded runner left running there without waiting for leases. The kernel drops the lock when the process
    dies, kill -9 included.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / "serve.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise InstanceLocked(str(self.path.parent), int(holder) if holder.isdigit() else None) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays, its pid is stale and harmless
            self._fd = None


def default_engine(settings: Settings, layout: DataLayout) -> Engine:
    """Rootless Podman as `runner.podman_user`: our own service in the data dir, unless `podman_url` names one."""
    runner = settings.runner
    user = PodmanUser.resolve(runner.podman_user)
    service = None
    if runner.podman_service == "shared" and not runner.podman_url:
        folder = Path(runner.podman_service_dir) if runner.podman_service_dir else shared_service_dir(user)
        service = SharedPodmanService(user, folder, runner.podman_idle)
    return PodmanEngine(user, instance=str(layout.root), url=runner.podman_url, state_dir=layout.podman,
                        service=service)


@asynccontextmanager
async def open_runtime(
    settings: Settings, environ: Mapping[str, str] = os.environ, *, workers: bool = True,
    engine: Engine | None = None, exclusive: bool | None = None,
) -> AsyncIterator[Runtime]:
    """Build the runtime; with `workers`, start the pool at once (else `start_workers()` starts it later).

    `engine` defaults to rootless Podman (tests pass a fake). `exclusive` (default: `workers`) takes the data
    dir's lock first — before the Podman service, whose start stops any service a crashed run left — and raises
    InstanceLocked when another process holds it.
    """
    layout = DataLayout(settings.data_dir)
    layout.root.mkdir(parents=True, exist_ok=True)
    lock = DataDirLock(layout.root) if (workers if exclusive is None else exclusive) else None
    if lock is not None:
        lock.acquire()
    try:
        engine = engine or default_engine(settings, layout)
        layout.create(engine.user)
        await engine.start()
        try:
            async with _assembled(settings, environ, layout, engine) as runtime:
                if workers:
                    await runtime.start_workers()
                try:
                    yield runtime
                finally:
                    await runtime.stop_workers()
        finally:
            await engine.close()
    finally:
        if lock is not None:
            lock.release()


@asynccontextmanager
async def _assembled(
    settings: Settings, environ: Mapping[str, str], layout: DataLayout, engine: Engine,
) -> AsyncIterator[Runtime]:
    queue = await asyncio.to_thread(open_queue, settings, environ)  # SQLite, or PostgreSQL with `queue.url`
    queue.set_quotas(settings.quotas)  # read at claim time: a changed setting applies from the next start
    # No request to the store here: a store that is down must not stop forgeci (jobs run without caches).
    store = open_store(settings, environ)
    try:
        async with open_cluster(queue, settings.queue.lease_seconds) as cluster:
            yield _runtime(settings, environ, layout, engine, queue, store, cluster)
    finally:
        store.close()
        queue.close()


def _runtime(settings: Settings, environ: Mapping[str, str], layout: DataLayout, engine: Engine,  # noqa: PLR0913
             queue: Queue, store: ObjectStore, cluster: Cluster) -> Runtime:
    hub, events = cluster.hub, cluster.events
    git_token = environ.get(settings.git.token_env) or None
    workspaces = Workspaces(layout.workspaces, layout.mirrors, engine.user, git_token,
                            remove_tree=engine.remove_tree)
    cache = CacheManager(store, queue, engine.user, repo_limit=settings.retention.cache_bytes_per_repo)
    snapshots = Snapshots(store, queue, engine.user)
    artifacts = ArtifactManager(store, queue, engine.user, max_size=settings.runner.max_artifact_size,
                                default_days=settings.retention.artifact_days)
    images = ImageBuilder.for_settings(settings.runner, engine.user, layout.root, store, engine.image_id)
    executor = Executor(settings, engine, workspaces, layout, hub, environ, cache=cache, snapshots=snapshots,
                        artifacts=artifacts, images=images)
    planner = Planner(queue, workspaces, max_retries=settings.queue.max_retries)
    control = JobControl(queue, events, planner, lease_seconds=settings.queue.lease_seconds)
    return Runtime(settings, layout, engine, queue, control, hub, events, executor, store, cache, snapshots,
                   planner, artifacts=artifacts, scheduler=Scheduler(queue, control, settings), cluster=cluster)
