"""`forgeci agent`: runs the coordinator's jobs on this machine with the same executor as the embedded runner.

Its own settings give its data dir (workspaces, mirrors, its own rootless Podman), `[runner]` and `[storage]`
(the shared s3:// store: it reads and writes caches, snapshots and artifacts there itself, while the coordinator
keeps their indexes). It claims jobs with long polls, runs up to `max_concurrent` at once, and reports through a
JobChannel per job, which keeps reporting through a coordinator restart.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any

from config.errors import ConfigError
from config.settings import SecretSpec, Settings
from runner.agent.channel import JobChannel
from runner.agent.client import AgentClient, AgentError, TokenRefused
from runner.agent.index import RemoteIndex
from runner.agent.wire import job_from_dict
from runner.artifacts import ArtifactManager
from runner.cache import CacheManager
from runner.engine import Engine
from runner.environment import Secrets
from runner.errors import RunnerError
from runner.executor import Executor
from runner.image_build import ImageBuilder
from runner.layout import DataLayout
from runner.logs import LogLine
from runner.models import JobState, Outcome
from runner.runtime import DataDirLock, default_engine
from runner.services import reap_pods, service_log_names
from runner.snapshot import Snapshots
from runner.store import open_store
from runner.workspace import Workspaces

log = logging.getLogger(__name__)
STOPPED = "the agent stopped before the job finished"
IMAGE_PRUNE_EVERY = 3600.0  # seconds


def check_store(settings: Settings) -> None:
    """Agents share the coordinator's object store; a file:// one is this machine's alone."""
    if not settings.store_url.startswith("s3://"):
        raise ConfigError(
            f"forgeci agent needs a shared s3:// object store in [storage] url (the coordinator's), not "
            f"{settings.store_url!r}: with a file:// store only the server's embedded runner runs jobs")


def job_secrets(data: Mapping[str, Any], git_token: str) -> Secrets:
    """The secrets the coordinator handed out with a job (their specs and the values this job may have)."""
    specs = {name: SecretSpec(env=str(spec["env"]), repos=tuple(spec.get("repos") or ()))
             for name, spec in (data.get("specs") or {}).items()}
    return Secrets(specs, {str(k): str(v) for k, v in (data.get("values") or {}).items()}, git_token)


class Agent:
    """Claims jobs from a coordinator (one of `servers`, tried in turn: runner.agent.client) and runs them here."""

    def __init__(self, settings: Settings, servers: str | Sequence[str], token: str, *, label: str,
                 max_concurrent: int = 1,
                 environ: Mapping[str, str] = os.environ, engine: Engine | None = None,
                 labels: tuple[str, ...] = ()) -> None:
        check_store(settings)
        self.settings = settings
        self.label = label
        self.labels = labels  # --labels: it is handed only jobs whose runs_on it has all of
        self.max_concurrent = max_concurrent
        self.environ = environ
        self.client = AgentClient(servers, token)
        self.layout = DataLayout(settings.data_dir)
        self._engine = engine
        self._running: dict[int, tuple[asyncio.Task[None], asyncio.Event, str]] = {}
        self._slot = asyncio.Event()
        self._stop = asyncio.Event()
        self._stopping = False
        self.executor: Executor | None = None

    async def run(self) -> int:
        """Until stop() (or a refused token): 0 after a stop, 2 when the token is refused."""
        self.layout.root.mkdir(parents=True, exist_ok=True)
        lock = DataDirLock(self.layout.root)
        lock.acquire()  # one agent (or server) per data dir: it owns the containers and workspaces there
        engine = self._engine or default_engine(self.settings, self.layout)
        try:
            self.layout.create(engine.user)
            await engine.start()
            async with self.client:
                store = open_store(self.settings, self.environ)
                pruning: asyncio.Task[None] | None = None
                try:
                    self.executor = self._executor(engine, store)
                    await self._reap(engine)
                    pruning = asyncio.create_task(self._prune_images(), name="forgeci-agent-image-prune")
                    return await self._claim_loop()
                finally:
                    if pruning is not None:
                        pruning.cancel()
                        await asyncio.gather(pruning, return_exceptions=True)
                    await self._stop_jobs()
                    store.close()
        finally:
            await engine.close()
            lock.release()

    def stop(self) -> None:
        self._stopping = True
        self._stop.set()
        self._slot.set()

    def _executor(self, engine: Engine, store: Any) -> Executor:
        settings = self.settings
        index: Any = RemoteIndex(self.client, asyncio.get_running_loop())
        git_token = self.environ.get(settings.git.token_env) or None
        workspaces = Workspaces(self.layout.workspaces, self.layout.mirrors, engine.user, git_token,
                                remove_tree=engine.remove_tree)
        return Executor(settings, engine, workspaces, self.layout, None, self.environ,
                        cache=CacheManager(store, index, engine.user), snapshots=Snapshots(store, index, engine.user),
                        artifacts=ArtifactManager(store, index, engine.user,
                                                  max_size=settings.runner.max_artifact_size,
                                                  default_days=settings.retention.artifact_days),
                        images=ImageBuilder.for_settings(settings.runner, engine.user, self.layout.root, store,
                                                         engine.image_id))

    async def _prune_images(self) -> None:
        """Hourly, as the server's maintenance does: the job images built here that no job used for a while."""
        while True:
            await asyncio.sleep(IMAGE_PRUNE_EVERY)
            builder = self.executor.images if self.executor is not None else None
            if builder is None:
                continue
            try:
                count, problems = await asyncio.to_thread(builder.prune, time.time(),
                                                          self.settings.retention.image_days)
            except (RunnerError, OSError) as exc:
                log.warning("pruning built images: %s", exc)
                continue
            for problem in problems:
                log.warning("pruning built images: %s", problem)
            if count:
                log.info("pruned %d built image(s)", count)

    async def _reap(self, engine: Engine) -> None:
        """Back from a crash: nothing runs here yet, so every job container, pod and workspace is a leftover."""
        assert self.executor is not None
        await reap_pods(engine, self.layout, set())
        for container_id, job_id in (await engine.job_containers()).items():
            log.info("removing leftover container %s of job %d", container_id[:12], job_id)
            await engine.remove(container_id)
        removed = await self.executor.workspaces.reap(set())
        if removed:
            log.info("removed leftover workspaces of jobs %s", removed)

    async def _claim_loop(self) -> int:
        fresh = True
        while not self._stopping:
            if len(self._running) >= self.max_concurrent:
                self._slot.clear()
                await self._slot.wait()
                continue
            claiming = asyncio.ensure_future(self.client.claim(
                self.label, fresh=fresh, running=[lease for _, _, lease in self._running.values()],
                labels=self.labels, max_concurrent=self.max_concurrent))
            stopped = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({claiming, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not claiming.done():  # stop() during the long poll: a job claimed just now expires, requeued
                claiming.cancel()
                await asyncio.gather(claiming, return_exceptions=True)
                continue
            try:
                data = claiming.result()
            except TokenRefused as exc:
                log.error("the coordinator refused this agent's token: %s", exc)
                return 2
            except AgentError as exc:
                log.error("claim refused: %s", exc)
                await asyncio.sleep(5)
                continue
            fresh = False
            if data is not None and not self._stopping:
                self._launch(data)
        return 0

    def _launch(self, data: Mapping[str, Any]) -> None:
        job = job_from_dict(data["job"])
        lease = str(data["lease"]["id"])
        cancel = asyncio.Event()
        task = asyncio.create_task(self._run(data, cancel), name=f"forgeci-agent-job-{job.id}")
        self._running[job.id] = (task, cancel, lease)
        log.info("job %d (attempt %d) claimed under lease %s", job.id, job.attempts, lease)

    async def _run(self, data: Mapping[str, Any], cancel: asyncio.Event) -> None:
        assert self.executor is not None
        job = job_from_dict(data["job"])
        lease = data["lease"]
        base = int(data.get("log_base") or 0)
        channel = JobChannel(self.client, job, str(lease["id"]), float(lease["seconds"]), cancel,
                             local_log=self.layout.log_file(job.id), log_base=base)
        try:
            self._start_log(job.id, base)
            executor = copy.copy(self.executor)  # this job's secrets; the rest is shared
            executor.secrets = job_secrets(data.get("secrets") or {}, self.executor.secrets.git_token)
            try:
                outcome = await executor.run(job, cancel, channel, on_line=channel.on_line)
            except Exception as exc:  # a bug must not kill the agent or leave the job running
                log.exception("job %d crashed the agent", job.id)
                outcome = Outcome(JobState.error, f"internal error: {exc}", infra=True)
            stopped_by_us = self._stopping and outcome.state is JobState.cancelled and not channel.cancel_requested
            kept = {name: self.layout.service_log_file(job.id, name)
                    for name in service_log_names(self.layout, job.id)}
            state = await channel.finish(outcome, STOPPED if stopped_by_us else None, kept)
            log.info("job %d: %s (recorded: %s)", job.id, outcome.state, state)
        except asyncio.CancelledError:
            await channel.abandon()
            raise
        finally:
            self._running.pop(job.id, None)
            self._slot.set()

    def _start_log(self, job_id: int, base: int) -> None:
        """This attempt's local log continues the coordinator's numbering (lines up to `base` are there)."""
        path = self.layout.log_file(job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        shutil.rmtree(self.layout.service_logs(job_id), ignore_errors=True)  # an earlier attempt's, here
        if base:
            marker = LogLine(base, round(time.time(), 3), "", "system",
                             f"(lines 1-{base} of this job's log are on the coordinator)")
            path.write_text(marker.to_json() + "\n")

    async def _stop_jobs(self) -> None:
        """Running jobs get `runner.shutdown_grace` to finish; then they are stopped and handed back."""
        tasks = [task for task, _, _ in self._running.values()]
        if not tasks:
            return
        log.info("waiting up to %.0fs for %d running job(s)", self.settings.runner.shutdown_grace, len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=self.settings.runner.shutdown_grace)
        if pending:
            for _, cancel, _ in self._running.values():
                cancel.set()
            await asyncio.wait(pending, timeout=60)
