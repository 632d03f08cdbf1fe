"""Worker pool: claims jobs up to max_concurrent, keeps their leases alive, records outcomes, stops gracefully."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

from runner.control import JobControl
from runner.errors import QueueError
from runner.executor import Executor
from runner.models import Job, JobState, Outcome
from runner.services import reap_pods

log = logging.getLogger(__name__)

CANCEL_POLL = 0.5  # seconds between checks of the queue's cancel flag (another process may set it)
CANCEL_GRACE_ON_STOP = 15.0  # a stopped job's step gets SIGTERM, 10 s, SIGKILL: leave room for that
ENGINE_POLL = 0.5  # seconds between pings of an engine that failed a job, before claiming again


def embedded_prefix(host: str | None = None) -> str:
    """What the runner ids of every embedded pool on this host start with (older forgecis used exactly it)."""
    return f"{host or socket.gethostname()}/embedded"


def default_runner_id() -> str:
    """Unique per process (host, pid, start time): for the record, and so that a restart can tell its jobs."""
    return f"{embedded_prefix()}/{os.getpid()}.{int(time.time() * 1000)}"


class WorkerPool:
    """Runs jobs from the queue as soon as they are enqueued and a slot is free (a wake-up, not a poll)."""

    def __init__(
        self, control: JobControl, executor: Executor, *, max_concurrent: int, lease_seconds: float,
        runner_id: str | None = None, labels: tuple[str, ...] = (), orphan_prefix: str | None = None,
        expire_leases: bool = True,
    ) -> None:
        self.control = control
        self.executor = executor
        self.max_concurrent = max_concurrent
        self.lease_seconds = lease_seconds
        self.runner_id = runner_id or default_runner_id()
        self.labels = labels  # runner.labels: it takes the jobs whose runs_on it has all of
        # Whose running jobs a start-up requeues at once: this host's embedded runners (SQLite), this data dir's
        # (PostgreSQL: other coordinators on the host run their own; runner.cluster.runner_prefix).
        self.orphan_prefix = orphan_prefix or embedded_prefix()
        # False on PostgreSQL: the lease-expiry singleton expires leases, on one coordinator of the cluster.
        self.expire_leases = expire_leases
        self._wake = asyncio.Event()
        self._running: dict[int, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        # Set by an infrastructure fault: claims wait until the engine answers, so that a dead Podman service
        # (restarted by the runtime's watchdog) does not burn every queued job's retries in a second.
        self._engine_suspect = False
        self._engine_down_logged = False

    # -- public -----------------------------------------------------------------------------------

    async def start(self) -> None:
        self.control.dispatcher = self
        await self.reap()
        self._loop_task = asyncio.create_task(self._claim_loop(), name="forgeci-claim-loop")

    def wake(self) -> None:
        """Something was enqueued (or a slot freed): look for work now."""
        self._wake.set()

    def cancel(self, job_id: int) -> None:
        """In-process shortcut for a cancel the queue already recorded."""
        entry = self._running.get(job_id)
        if entry is not None:
            entry[1].set()

    @property
    def running(self) -> list[int]:
        return list(self._running)

    async def stop(self, grace: float = 30.0) -> None:
        """Stop claiming; let running jobs finish within `grace`, then stop them and return them to the queue."""
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        tasks = [task for task, _ in self._running.values()]
        if tasks:
            log.info("waiting up to %.0fs for %d running job(s)", grace, len(tasks))
            _, pending = await asyncio.wait(tasks, timeout=grace)
            if pending:
                for _, cancel in self._running.values():
                    cancel.set()
                await asyncio.wait(pending, timeout=CANCEL_GRACE_ON_STOP)
        if self.control.dispatcher is self:
            self.control.dispatcher = None

    async def reap(self) -> None:
        """After a crash: requeue the jobs this host's embedded runners left running (only the holder of the data
        dir's lock runs embedded workers on its queue), remove containers and workspaces nobody runs."""
        prefix = self.orphan_prefix
        await self.control.requeue_orphans(
            lambda runner_id: runner_id == prefix or runner_id.startswith(prefix + "/"), "runner restarted",
            keep=frozenset(self._running))
        await self.control.settle_all()
        running = {job.id for job in await asyncio.to_thread(self.control.queue.running_jobs)}
        # Pods first: removing one takes its services and job container with it.
        await reap_pods(self.executor.engine, self.executor.layout, running)
        for container_id, job_id in (await self.executor.engine.job_containers()).items():
            if job_id not in running:
                log.info("removing leftover container %s of job %d", container_id[:12], job_id)
                await self.executor.engine.remove(container_id)
        removed = await self.executor.workspaces.reap(running)
        if removed:
            log.info("removed leftover workspaces of jobs %s", removed)

    # -- internals --------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        interval = max(1.0, self.lease_seconds / 3)
        while not self._stopping:
            self._wake.clear()
            try:
                if self.expire_leases:
                    await self.control.expire_leases()
                while len(self._running) < self.max_concurrent and not self._stopping and await self._engine_ready():
                    job = await self.control.claim(self.runner_id, self.lease_seconds, self.labels)
                    if job is None:
                        break
                    self._launch(job)
            except QueueError as exc:
                log.error("queue error in the claim loop: %s", exc)
            try:
                await asyncio.wait_for(self._wake.wait(), ENGINE_POLL if self._engine_suspect else interval)
            except TimeoutError:
                pass

    async def _engine_ready(self) -> bool:
        """True unless a job just met an infrastructure fault and the engine does not answer (yet)."""
        if not self._engine_suspect:
            return True
        if not await self.executor.engine.ping():
            if not self._engine_down_logged:
                log.warning("the container engine does not answer; claiming no job until it does")
                self._engine_down_logged = True
            return False
        if self._engine_down_logged:
            log.info("the container engine answers again")
        self._engine_suspect = self._engine_down_logged = False
        await self.executor.remove_strays()
        return True

    def _launch(self, job: Job) -> None:
        cancel = asyncio.Event()
        task = asyncio.create_task(self._run(job, cancel), name=f"forgeci-job-{job.id}")
        self._running[job.id] = (task, cancel)

    async def _run(self, job: Job, cancel: asyncio.Event) -> None:
        keeper = asyncio.create_task(self._keep_lease(job, cancel))
        try:
            await self.control.begin_attempt(job.id)
            outcome = await self.executor.run(job, cancel, self.control)
            await self._record(job, outcome)
        except Exception as exc:  # a bug must not kill the pool or leave the job running
            log.exception("job %d crashed the runner", job.id)
            await self._record(job, Outcome(JobState.error, f"internal error: {exc}", infra=True))
        finally:
            keeper.cancel()
            self._running.pop(job.id, None)
            self.wake()

    async def _record(self, job: Job, outcome: Outcome) -> None:
        # A job we stopped because the runner is shutting down goes back to the queue; one a user
        # cancelled stays cancelled.
        try:
            stopped_by_us = (self._stopping and outcome.state is JobState.cancelled
                             and not await self.control.cancel_requested(job.id))
        except QueueError:
            stopped_by_us = False
        if outcome.infra:
            self._engine_suspect = True
        await self.control.record(job, outcome, self.runner_id,
                                  requeue="the runner stopped before the job finished" if stopped_by_us else None)

    async def _keep_lease(self, job: Job, cancel: asyncio.Event) -> None:
        """Heartbeat every third of the lease; watch the cancel flag (set by the API or another process)."""
        beat_every = self.lease_seconds / 3
        since_beat = 0.0
        while True:
            await asyncio.sleep(CANCEL_POLL)
            since_beat += CANCEL_POLL
            try:
                if await self.control.cancel_requested(job.id):
                    cancel.set()
                if since_beat >= beat_every:
                    since_beat = 0.0
                    if not await self.control.heartbeat(job.id, self.runner_id, self.lease_seconds):
                        log.warning("job %d: lease lost; stopping it", job.id)
                        cancel.set()
            except QueueError as exc:
                log.warning("job %d: heartbeat failed: %s", job.id, exc)
