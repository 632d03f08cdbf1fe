"""Runs one job: workspace, pipeline, container, steps with timeouts and cancellation, cleanup."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from config.durations import format_duration
from config.errors import ConfigError
from config.pipeline import Pipeline, Step, load_pipeline, pipeline_from_dict
from config.settings import Settings
from runner.archive import ArchiveError, CorruptArchive, UnsafeArchive
from runner.cache import CacheManager, CachePlan, plan_cache
from runner.errors import QueueError, RunnerError
from runner.layout import DataLayout
from runner.logs import JobLog, LogHub, LogLine, Masker
from runner.models import Job, JobState, Outcome, SnapshotRecord, StepResult
from runner.engine import ContainerSpec, Engine, EngineError
from runner.retry import Resume
from runner.snapshot import Snapshots, should_snapshot
from runner.store import ObjectMissing, StoreError
from runner.workspace import WorkspaceError, Workspaces

log = logging.getLogger(__name__)

PIPELINE_FILE = ".forgeci.toml"
TIMEOUT_GRACE = 1.0  # a step over its limit gets SIGTERM, then SIGKILL this much later
CANCEL_GRACE = 10.0  # a cancelled step gets SIGTERM, then SIGKILL this much later
KILL_WAIT = 1.0  # after SIGKILL, wait this long before removing the whole container


class StepReporter(Protocol):
    """Where step progress goes: the queue's step rows and the event bus (worker), or a terminal (`forgeci run`)."""

    def checked_out(self, job: Job, sha: str) -> None:
        """The workspace holds commit `sha` (for a job submitted without one: its ref's tip, now pinned)."""

    def step_started(self, job: Job, index: int, name: str, total: int) -> None: ...

    def step_finished(self, job: Job, result: StepResult, total: int) -> None: ...


class NullReporter:
    def checked_out(self, job: Job, sha: str) -> None:
        pass

    def step_started(self, job: Job, index: int, name: str, total: int) -> None:
        pass

    def step_finished(self, job: Job, result: StepResult, total: int) -> None:
        pass


def repo_slug(repo: str) -> str:
    """`owner/name` of a clone URL or path (`https://host/acme/app.git` -> `acme/app`), for secret globs."""
    path = urlsplit(repo).path if "://" in repo else repo.split(":", 1)[-1] if re.match(r"^[\w.-]+@", repo) else repo
    parts = [p for p in path.removesuffix("/").removesuffix(".git").split("/") if p]
    return "/".join(parts[-2:])


def checked_out_sha(workspace: Path) -> str:
    """The detached HEAD of a prepared workspace ('' when it is not a git checkout)."""
    try:
        head = (workspace / ".git" / "HEAD").read_text().strip()
    except OSError:
        return ""
    return head if re.fullmatch(r"[0-9a-f]{40,64}", head) else ""


class Executor:
    """Turns a claimed job into an Outcome; the caller records it in the queue."""

    def __init__(
        self, settings: Settings, engine: Engine, workspaces: Workspaces, layout: DataLayout,
        hub: LogHub | None, environ: Mapping[str, str], *, cache: CacheManager | None = None,
        snapshots: Snapshots | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.workspaces = workspaces
        self.layout = layout
        self.hub = hub
        self.environ = environ
        self.cache = cache  # None: no caches (and no package-manager variables)
        self.snapshots = snapshots  # None: no snapshots, and no retries from a failed step
        self._secret_values = self._resolve_all_secrets()
        self._limits_apply: bool | None = None
        self._strays: set[str] = set()  # containers whose removal failed (the engine was down): removed later

    async def remove_strays(self) -> None:
        """Remove the containers an engine fault left behind (their jobs have ended or gone back to the queue)."""
        for container_id in list(self._strays):
            try:
                await self.engine.remove(container_id)
            except EngineError:
                continue  # still down: the next call tries again
            self._strays.discard(container_id)

    def _resolve_all_secrets(self) -> dict[str, str]:
        values = {}
        for name, spec in self.settings.secrets.items():
            value = self.environ.get(spec.env)
            if value:
                values[name] = value
        return values

    def masker(self) -> Masker:
        """Every configured secret is masked in every job's log, whether or not the job received it."""
        tokens = list(self._secret_values.values())
        git_token = self.environ.get(self.settings.git.token_env)
        if git_token:
            tokens.append(git_token)
        return Masker(tokens)

    async def run(
        self, job: Job, cancel: asyncio.Event, reporter: StepReporter | None = None, *,
        only_step: str | None = None, local_path: Path | None = None,
        on_line: Callable[[LogLine], None] | None = None,
    ) -> Outcome:
        """One attempt of `job`: never raises for the job's own faults; infrastructure faults set `infra`."""
        joblog = JobLog(self.layout.log_file(job.id), job.id, self.hub, self.masker(), on_line=on_line)
        try:
            return await self._run(job, joblog, cancel, reporter or NullReporter(), only_step, local_path)
        except RunnerError as exc:  # an engine or workspace fault we did not expect at a given point
            joblog.system(f"infrastructure error: {exc}")
            return Outcome(JobState.error, str(exc), infra=True)
        finally:
            joblog.close()

    async def _run(
        self, job: Job, joblog: JobLog, cancel: asyncio.Event, reporter: StepReporter,
        only_step: str | None, local_path: Path | None,
    ) -> Outcome:
        spec = job.spec
        joblog.system(f"job {job.id}, attempt {job.attempts}: {spec.repo} {spec.ref} {spec.sha or ''}".rstrip())
        try:
            resume = Resume.of(spec.meta)
        except ValueError as exc:
            joblog.system(str(exc))
            return Outcome(JobState.failure, str(exc))
        container_id: str | None = None
        workspace: Path | None = None
        snapshot: SnapshotRecord | None = None
        # Store work runs in threads; a cancel must stop it too. Progress lines come back through the loop.
        abort = threading.Event()
        watcher = asyncio.ensure_future(cancel.wait())
        watcher.add_done_callback(lambda done: abort.set() if not done.cancelled() else None)
        loop = asyncio.get_running_loop()

        def say(text: str) -> None:
            loop.call_soon_threadsafe(joblog.system, text)

        try:
            try:
                if resume is not None:
                    found = await self._resume_workspace(job, resume, say, abort)
                    if isinstance(found, Outcome):
                        joblog.system(found.error or "cannot resume")
                        return found
                    workspace, snapshot = found
                elif local_path is not None:
                    workspace = await self.workspaces.from_local(job.id, local_path)
                else:
                    workspace = await self.workspaces.prepare(job.id, spec.repo, spec.ref, spec.sha, joblog.system)
            except WorkspaceError as exc:
                joblog.system(f"checkout failed: {exc}")
                workspace = self.workspaces.path(job.id)  # a half-made one (a full disk, a failed fetch) goes too
                return Outcome(JobState.error if exc.infra else JobState.failure, f"checkout failed: {exc}",
                               infra=exc.infra)

            sha = checked_out_sha(workspace)
            joblog.system(f"workspace ready at {sha or 'the working tree'}")
            if sha and not spec.sha:
                reporter.checked_out(job, sha)
            try:
                pipeline = self._pipeline(job, workspace)
            except ConfigError as exc:
                for issue in exc.issues:
                    joblog.system(f"invalid pipeline: {issue}")
                first = exc.issues[0] if exc.issues else exc
                more = f" (+{len(exc.issues) - 1} more)" if len(exc.issues) > 1 else ""
                return Outcome(JobState.failure, f"invalid pipeline: {first}{more}")

            if not pipeline.applies_to(spec.base_ref if spec.pr_number is not None and spec.base_ref else spec.ref):
                message = f"skipped: {spec.ref} is not in the pipeline's branches {list(pipeline.branches)}"
                joblog.system(message)
                return Outcome(JobState.skipped, message)

            steps = pipeline.steps
            if only_step is not None:
                steps = tuple(s for s in steps if s.name == only_step)
                if not steps:
                    names = ", ".join(s.name for s in pipeline.steps)
                    return Outcome(JobState.failure, f"no step named {only_step!r} (steps: {names})")

            if resume is not None and snapshot is not None:
                if resume.step >= len(steps) or steps[resume.step].name != snapshot.failed_step_name:
                    message = (f"cannot resume: step {resume.step + 1} of the pipeline is not "
                               f"{snapshot.failed_step_name!r}, the step that failed in job {resume.job_id}")
                    joblog.system(message)
                    return Outcome(JobState.failure, message)

            image = pipeline.image or self.settings.runner.image
            plan = await self._cache_plan(job, pipeline, workspace, image, local_path, joblog)
            env = self._environment(job, pipeline, workspace, joblog, plan.env if plan else {})
            if plan is not None and self.cache is not None and resume is None:
                await self._guarded("cache restore", joblog, self.cache.restore, plan, workspace, say, abort, job.id)
            timeout = pipeline.timeout or self.settings.runner.job_timeout
            deadline = time.monotonic() + timeout
            container_id = await self._start_container(job, pipeline, workspace)
            bash = await self.engine.has_bash(container_id, image)
            joblog.system(f"container {container_id[:12]} from {image}")

            results: list[StepResult] = []
            state = JobState.success
            error: str | None = None
            for index, step in enumerate(steps):
                if resume is not None and index < resume.step:
                    results.append(self._restored(job, joblog, reporter, index, len(steps), step, resume))
                    continue
                if cancel.is_set():
                    state, error = JobState.cancelled, "cancelled"
                    break
                reporter.step_started(job, index, step.name, len(steps))
                result = await self._step(job, joblog, container_id, bash, index, len(steps), step, env,
                                          deadline, cancel)
                results.append(result)
                reporter.step_finished(job, result, len(steps))
                if result.state is JobState.cancelled:
                    state, error = JobState.cancelled, f"cancelled during step {step.name}"
                    break
                if result.state is JobState.timeout:
                    over_job = time.monotonic() >= deadline - 0.05
                    limit = "the job's" if over_job else "its"
                    state, error = JobState.timeout, f"step {step.name} exceeded {limit} time limit"
                    break
                if result.state is JobState.failure and not step.continue_on_error:
                    state, error = JobState.failure, f"step {step.name} failed (exit {result.exit_code})"
                    break
            joblog.system(self._summary(state, results))
            if local_path is None:
                # The container goes first: no process of the job may change the tree while root archives it.
                try:
                    await self.engine.remove(container_id)
                except EngineError as exc:
                    joblog.system(f"warning: the container could not be removed ({exc}); no cache save or snapshot")
                else:
                    container_id = None
                    await self._keep(job, joblog, pipeline, workspace, image, plan, state, results, say, abort)
            return Outcome(state, error, steps=tuple(results))
        finally:
            watcher.cancel()
            if container_id is not None:
                try:
                    await self.engine.remove(container_id)
                except EngineError as exc:
                    log.warning("job %d: could not remove its container (retried once the engine answers): %s",
                                job.id, exc)
                    self._strays.add(container_id)
            if workspace is not None:
                try:
                    await self.workspaces.remove(job.id)
                except RunnerError as exc:
                    log.warning("job %d: could not remove its workspace: %s", job.id, exc)

    def _pipeline(self, job: Job, workspace: Path) -> Pipeline:
        if job.spec.pipeline is not None:
            return pipeline_from_dict(job.spec.pipeline, "submitted pipeline")
        path = workspace / PIPELINE_FILE
        if not path.is_file():
            raise ConfigError(f"the repository has no {PIPELINE_FILE} at its root (forgeci init writes one)",
                              source=PIPELINE_FILE)
        return load_pipeline(path)

    def _environment(
        self, job: Job, pipeline: Pipeline, workspace: Path, joblog: JobLog, cache_env: Mapping[str, str],
    ) -> dict[str, str]:
        """Job spec < cache variables < pipeline < secrets (step env goes on top per step) plus forgeci's own."""
        spec = job.spec
        env: dict[str, str] = {**spec.env, **cache_env, **pipeline.env}
        slug = repo_slug(spec.repo)
        for name in pipeline.secrets:
            secret = self.settings.secrets.get(name)
            if secret is None:
                joblog.system(f"secret {name} is not configured on this server; not set")
            elif spec.fork:
                joblog.system(f"secret {name} withheld: fork pull requests never receive secrets")
            elif not secret.allows(slug):
                joblog.system(f"secret {name} withheld: {slug} is not in its repos")
            elif name not in self._secret_values:
                joblog.system(f"secret {name}: its variable {secret.env} is not set on the server; not set")
            else:
                env[name] = self._secret_values[name]
        env.update(CI="true", FORGECI="true", FORGECI_JOB_ID=str(job.id), FORGECI_REPO=spec.repo,
                   FORGECI_REF=spec.ref, FORGECI_SHA=spec.sha or checked_out_sha(workspace))
        return env

    async def _resume_workspace(
        self, job: Job, resume: Resume, say: Callable[[str], None], abort: threading.Event,
    ) -> tuple[Path, SnapshotRecord] | Outcome:
        """A fresh workspace holding the snapshot of job `resume.job_id`, instead of a checkout."""
        if self.snapshots is None:
            return Outcome(JobState.failure, "this runner keeps no snapshots; retry without --from-failed-step")
        try:
            record = await asyncio.to_thread(self.snapshots.queue.snapshot, resume.job_id)
        except QueueError as exc:
            return Outcome(JobState.error, f"cannot read the snapshot index: {exc}", infra=True)
        if record is None or record.failed_step != resume.step:
            return Outcome(JobState.failure, f"job {resume.job_id} has no snapshot to resume from (pruned?); "
                                             f"retry it without --from-failed-step")
        workspace = self.workspaces.path(job.id)
        await self.workspaces.remove(job.id)
        try:
            workspace.mkdir(mode=0o755)
            self.workspaces.user.chown(workspace)
            await asyncio.to_thread(self.snapshots.restore, record, workspace, say, abort)
        except ObjectMissing:
            return Outcome(JobState.failure, f"the snapshot of job {resume.job_id} is gone from the store; "
                                             f"retry it without --from-failed-step")
        except (CorruptArchive, UnsafeArchive) as exc:
            return Outcome(JobState.failure, f"the snapshot of job {resume.job_id} cannot be restored: {exc}")
        except (StoreError, ArchiveError, OSError) as exc:  # the store or the disk: worth retrying later
            return Outcome(JobState.error, f"cannot restore the snapshot of job {resume.job_id}: {exc}", infra=True)
        return workspace, record

    async def _cache_plan(
        self, job: Job, pipeline: Pipeline, workspace: Path, image: str, local_path: Path | None, joblog: JobLog,
    ) -> CachePlan | None:
        """What the job caches; `forgeci run` keeps none (its data dir is thrown away after the run)."""
        if self.cache is None or local_path is not None:
            return None
        plan = await asyncio.to_thread(plan_cache, job.spec, pipeline, workspace, image)
        if plan is None:
            joblog.system("cache: no [cache] table and no lockfile at the repository root; nothing to cache")
        elif plan.detected:
            joblog.system(f"cache: detected from {', '.join(plan.key_files)}: {', '.join(plan.paths)}")
        return plan

    def _restored(
        self, job: Job, joblog: JobLog, reporter: StepReporter, index: int, total: int, step: Step, resume: Resume,
    ) -> StepResult:
        """A step before the resume point: its work is in the snapshot, so it is recorded, not run."""
        joblog.system(f"step {index + 1}/{total}: {step.name} restored from the snapshot of job {resume.job_id} "
                      f"(not run again)", step=step.name)
        reporter.step_started(job, index, step.name, total)
        result = StepResult(index, step.name, JobState.restored, None, 0.0)
        reporter.step_finished(job, result, total)
        return result

    async def _keep(
        self, job: Job, joblog: JobLog, pipeline: Pipeline, workspace: Path, image: str, plan: CachePlan | None,
        state: JobState, results: list[StepResult], say: Callable[[str], None], abort: threading.Event,
    ) -> None:
        """Cache save and snapshot, per the pipeline's policies; their failures are warnings, never the job's state."""
        if plan is not None and self.cache is not None and (
                state is JobState.success or plan.save == "always" and state in (JobState.failure, JobState.timeout)):
            await self._guarded("cache save", joblog, self.cache.save, plan, workspace, say, abort)
        if self.snapshots is not None and should_snapshot(pipeline.snapshot, state):
            failed = results[-1] if state is not JobState.success and results else None
            await self._guarded(
                "snapshot", joblog, self.snapshots.take, job.id, workspace,
                sha=checked_out_sha(workspace) or job.spec.sha or "", image=image, state=state,
                failed_step=failed.index if failed else None, failed_step_name=failed.name if failed else None,
                say=say, abort=abort)

    @staticmethod
    async def _guarded(what: str, joblog: JobLog, func: Callable[..., object], *args: object, **kwargs: object) -> None:
        """Run store work in a thread. It reports its own failures; anything else it raises is a bug, logged as a
        warning in the job's log: caches and snapshots never decide a job's state."""
        try:
            await asyncio.to_thread(func, *args, **kwargs)
        except Exception as exc:
            log.exception("job %d: %s failed", joblog.job_id, what)
            joblog.system(f"warning: {what} failed: {exc}")

    async def _start_container(self, job: Job, pipeline: Pipeline, workspace: Path) -> str:
        runner = self.settings.runner
        if self._limits_apply is None:
            self._limits_apply = await self.engine.cgroup_limits_apply()
            if not self._limits_apply:
                log.warning("rootless Podman on a cgroup-v1 host ignores memory and pids limits; "
                            "forgeci still enforces step and job timeouts")
        spec = ContainerSpec(
            job_id=job.id, image=pipeline.image or runner.image, workspace=workspace,
            env={"CI": "true"}, network=runner.network, memory=runner.memory, pids_limit=runner.pids_limit,
            ulimits=runner.ulimits, ca_bundle=runner.ca_bundle, limits=self._limits_apply,
        )
        return await self.engine.start_job_container(spec)

    async def _step(
        self, job: Job, joblog: JobLog, container_id: str, bash: bool, index: int, total: int, step: Step,
        env: Mapping[str, str], deadline: float, cancel: asyncio.Event,
    ) -> StepResult:
        joblog.system(f"step {index + 1}/{total}: {step.name}", step=step.name)
        started = time.monotonic()
        limit = min(step.timeout or self.settings.runner.step_timeout, max(0.0, deadline - started))
        argv = self.engine.step_command(step.run, bash)
        execution = asyncio.ensure_future(
            self.engine.exec(container_id, argv, {**env, **step.env},
                             lambda stream, data: joblog.write(step.name, stream, data)))
        cancelled = asyncio.ensure_future(cancel.wait())
        try:
            done, _ = await asyncio.wait({execution, cancelled}, timeout=limit,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
        exit_code: int | None
        if execution in done:
            exit_code = execution.result()
            state = JobState.success if exit_code == 0 else JobState.failure
        else:
            state = JobState.cancelled if cancel.is_set() else JobState.timeout
            why = "cancelled" if state is JobState.cancelled else f"over its {format_duration(limit)} limit"
            joblog.system(f"stopping step {step.name}: {why}", step=step.name)
            exit_code = await self._stop(container_id, execution,
                                         CANCEL_GRACE if state is JobState.cancelled else TIMEOUT_GRACE)
        joblog.flush(step.name)
        duration = time.monotonic() - started
        mark = {JobState.success: "ok", JobState.failure: "failed"}.get(state, str(state))
        code = f", exit {exit_code}" if exit_code is not None else ""
        joblog.system(f"step {step.name} {mark} in {format_duration(duration)}{code}", step=step.name)
        return StepResult(index, step.name, state, exit_code, duration)

    async def _stop(self, container_id: str, execution: asyncio.Future[int], grace: float) -> int | None:
        """SIGTERM the step's process group, SIGKILL after `grace`, remove the container as the last resort."""
        for sig, wait in (("TERM", grace), ("KILL", KILL_WAIT)):
            await self.engine.stop_step(container_id, sig)
            try:
                return await asyncio.wait_for(asyncio.shield(execution), wait)
            except TimeoutError:
                continue
            except EngineError:
                return None
        await self.engine.remove(container_id)
        try:
            return await asyncio.wait_for(execution, 5)
        except (TimeoutError, EngineError):
            return None

    @staticmethod
    def _summary(state: JobState, results: list[StepResult]) -> str:
        total = sum(r.duration for r in results)
        return f"job {state} after {len(results)} step{'s' if len(results) != 1 else ''} in {format_duration(total)}"
