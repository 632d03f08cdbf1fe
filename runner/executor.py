"""Runs one job in phases: workspace (checkout or resume), plan, steps in a container or pod, keep (cache, snapshot)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from config.durations import format_duration
from config.errors import ConfigError
from config.images import ImageBuild
from config.pipeline import Pipeline, Step
from config.settings import Settings
from runner.artifacts import ArtifactManager
from runner.cache import CacheManager, CachePlan, plan_caches
from runner.engine import ContainerSpec, Engine, EngineError
from runner.environment import Secrets, job_environment, step_environment
from runner.errors import RunnerError
from runner.image_build import ImageBuilder, job_image
from runner.layout import DataLayout
from runner.logs import JobLog, LogHub, LogLine
from runner.models import Job, JobState, Outcome, SnapshotRecord, StepResult, StepState
from runner.outputs import read_outputs
from runner.job_rules import (
    Plan,
    invalid_pipeline,
    missing_image_message,
    read_pipeline,
    resume_mismatch,
    select_steps,
    skipped,
)
from runner.retry import Resume, resume_workspace
from runner.services import Box, JobPod, Limits, Solo
from runner.snapshot import Snapshots, should_snapshot
from runner.timings import phase
from runner.reporter import NullReporter, StepReporter, checked_out_sha
from runner.verdicts import step_verdict, summary
from runner.warm_pool import WarmPool, adopt
from runner.workspace import WorkspaceError, Workspaces

__all__ = ["Executor", "NullReporter", "Outcome", "StepReporter", "StepResult", "checked_out_sha"]

log = logging.getLogger(__name__)

TIMEOUT_GRACE = 1.0  # a step over its limit gets SIGTERM, then SIGKILL this much later
CANCEL_GRACE = 10.0  # a cancelled step gets SIGTERM, then SIGKILL this much later
KILL_WAIT = 1.0  # after SIGKILL, wait this long before removing the whole container


@dataclass(frozen=True)
class Attempt:
    """One attempt of a job, as its phases share it."""

    job: Job
    joblog: JobLog
    cancel: asyncio.Event
    reporter: StepReporter
    abort: threading.Event  # set by a cancel: store work in threads polls it, since it cannot await the event
    say: Callable[[str], None]  # a log line from such a thread, written on the loop


@dataclass(frozen=True)
class Checkout:
    """What the workspace phase made: the job's tree, the commit in it, and the snapshot a resumed job came from."""

    workspace: Path
    sha: str  # '' for a working tree that is not a git checkout
    snapshot: SnapshotRecord | None = None


class Executor:
    """Turns a claimed job into an Outcome; the caller records it in the queue."""

    def __init__(
        self, settings: Settings, engine: Engine, workspaces: Workspaces, layout: DataLayout,
        hub: LogHub | None, environ: Mapping[str, str], *, cache: CacheManager | None = None,
        snapshots: Snapshots | None = None, artifacts: ArtifactManager | None = None,
        images: ImageBuilder | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.workspaces = workspaces
        self.layout = layout
        self.hub = hub
        self.secrets = Secrets.resolve(settings, environ)  # once: the server's environment does not change
        self.cache = cache  # None: no caches (and no package-manager variables)
        self.snapshots = snapshots  # None: no snapshots, and no retries from a failed step
        self.artifacts = artifacts  # None: artifacts are neither kept nor fetched
        self.images = images or ImageBuilder.for_settings(settings.runner, engine.user, layout.root,
                                                          lookup=engine.image_id)
        self._limits_apply: bool | None = None
        self._strays: list[Box] = []  # containers and pods whose removal failed (the engine was down): removed later
        # `forgeci run`: job containers to remove after the summary (their workspaces go with the scratch data dir)
        self.deferred: list[str] | None = None
        self.warm: WarmPool | None = None  # `runner.warm_pool`: started containers of the default image
        self._slots: dict[int, Path] = {}  # job id -> the warm-pool slot folder its tree was moved into

    async def remove_strays(self) -> None:
        """Remove what an engine fault left behind (its jobs have ended or gone back to the queue)."""
        for box in list(self._strays):
            try:
                await box.remove()
            except EngineError:
                continue  # still down: the next call tries again
            self._strays.remove(box)

    async def run(
        self, job: Job, cancel: asyncio.Event, reporter: StepReporter | None = None, *,
        only_step: str | None = None, local_path: Path | None = None,
        on_line: Callable[[LogLine], None] | None = None,
    ) -> Outcome:
        """One attempt of `job`: never raises for the job's own faults; infrastructure faults set `infra`."""
        joblog = JobLog(self.layout.log_file(job.id), job.id, self.hub, self.secrets.masker(), on_line=on_line,
                        max_bytes=self.settings.runner.max_log_bytes)
        # Store work runs in threads; a cancel must stop it too. Progress lines come back through the loop.
        abort = threading.Event()
        watcher = asyncio.ensure_future(cancel.wait())
        watcher.add_done_callback(lambda done: abort.set() if not done.cancelled() else None)
        loop = asyncio.get_running_loop()
        attempt = Attempt(job, joblog, cancel, reporter or NullReporter(), abort,
                          lambda text: loop.call_soon_threadsafe(joblog.system, text))
        try:
            return await self._run(attempt, only_step, local_path)
        except RunnerError as exc:  # an engine or workspace fault we did not expect at a given point
            joblog.system(f"infrastructure error: {exc}")
            return Outcome(JobState.error, str(exc), infra=True)
        finally:
            watcher.cancel()
            joblog.close()

    async def _run(self, attempt: Attempt, only_step: str | None, local_path: Path | None) -> Outcome:
        """The phases in order; each returns an Outcome instead of its value when it ends the job."""
        job, joblog = attempt.job, attempt.joblog
        spec = job.spec
        joblog.system(f"job {job.id}, attempt {job.attempts}: {spec.repo} {spec.ref} {spec.sha or ''}".rstrip())
        try:
            resume = Resume.of(spec.meta)
        except ValueError as exc:
            joblog.system(str(exc))
            return Outcome(JobState.failure, str(exc))
        box: Box | None = None
        try:
            with phase("workspace"):
                checkout = await self._checkout(attempt, resume, local_path)
            if isinstance(checkout, Outcome):
                return checkout
            with phase("plan (pipeline file)"):
                plan = await self._plan(attempt, checkout, resume, only_step, local_path)
            if isinstance(plan, Outcome):
                return plan
            if plan.caches and self.cache is not None and resume is None:
                await self._guarded("cache restore", joblog, self.cache.restore_all, plan.caches, checkout.workspace,
                                    attempt.say, attempt.abort, job.id, job.attempts)
            if self.artifacts is not None and resume is None and (fetched := await asyncio.to_thread(  # needs' files
                    self.artifacts.restore, job, plan.pipeline, checkout.workspace, attempt.say, attempt.abort)):
                return fetched
            deadline = time.monotonic() + plan.timeout
            box = self._box(attempt, plan)
            checkout = await self._warm(attempt.job.id, box, plan, checkout)
            ended = await self._start_container(attempt, box, plan, checkout.workspace, deadline)
            if ended is not None:  # a service did not start or get ready: no step runs
                return ended
            with phase("steps"):
                outcome = await self._run_steps(attempt, plan, box.container_id, resume, deadline)
            outcome = self._with_outputs(attempt, checkout.workspace, outcome)
            joblog.system(summary(outcome))
            kept = local_path is None or (self.artifacts is not None and plan.pipeline.artifacts is not None)
            if kept and await self._release(box, joblog):
                box = None
                if self.artifacts is not None and plan.pipeline.artifacts is not None:  # before the snapshot
                    await self._guarded("artifacts", joblog, self.artifacts.upload, job, plan.pipeline,
                                        checkout.workspace, outcome.state, attempt.say, attempt.abort)
                if local_path is None:
                    await self._keep(attempt, plan, checkout.workspace, outcome)
            return outcome
        finally:
            await self._clean_up(job.id, box)

    def _with_outputs(self, attempt: Attempt, workspace: Path, outcome: Outcome) -> Outcome:
        """What the steps wrote to $FORGECI_OUTPUT, for the jobs that need this one; a matrix member passes none
        (which member's value would win is a known source of bugs elsewhere)."""
        outputs, problems = read_outputs(workspace, self.secrets.masker())
        for problem in problems:
            attempt.joblog.system(problem)
        if outputs and attempt.job.display != attempt.job.name:
            attempt.joblog.system(f"outputs: {', '.join(sorted(outputs))} not passed on: a matrix job passes none")
            return outcome
        if outputs:
            attempt.joblog.system(f"outputs: {', '.join(sorted(outputs))}")
        return dataclasses.replace(outcome, outputs=outputs) if outputs else outcome

    # -- workspace phase ------------------------------------------------------------------------------------

    async def _checkout(self, attempt: Attempt, resume: Resume | None, local_path: Path | None) -> Checkout | Outcome:
        """The job's tree: the snapshot a retry resumes from, `forgeci run`'s working tree, or a fresh checkout."""
        job, joblog = attempt.job, attempt.joblog
        spec = job.spec
        snapshot: SnapshotRecord | None = None
        try:
            if resume is not None:
                found = await resume_workspace(self.snapshots, self.workspaces, job, resume, attempt.say, attempt.abort)
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
            return Outcome(JobState.error if exc.infra else JobState.failure, f"checkout failed: {exc}",
                           infra=exc.infra)
        sha = checked_out_sha(workspace)
        joblog.system(f"workspace ready at {sha or 'the working tree'}")
        if sha and not spec.sha:
            attempt.reporter.checked_out(job, sha)
        return Checkout(workspace, sha, snapshot)

    # -- plan phase -----------------------------------------------------------------------------------------

    async def _plan(
        self, attempt: Attempt, checkout: Checkout, resume: Resume | None, only_step: str | None,
        local_path: Path | None,
    ) -> Plan | Outcome:
        """The pipeline, whether it applies to the ref, the steps to run, the image, the caches, the environment."""
        job, joblog = attempt.job, attempt.joblog
        try:
            pipeline = read_pipeline(job.spec, checkout.workspace)
        except ConfigError as exc:
            return invalid_pipeline(exc, joblog.system)
        if (message := skipped(job.spec, pipeline)) is not None:
            joblog.system(message)
            return Outcome(JobState.skipped, message)
        steps = select_steps(pipeline, only_step)
        if isinstance(steps, Outcome):
            return steps
        message = None
        if resume is not None and checkout.snapshot is not None:
            message = resume_mismatch(steps, resume, checkout.snapshot)
        if message is None:
            message = await self._missing_image(pipeline)
        if message is not None:  # the pipeline changed under a resumed job, or names an image that does not exist
            joblog.system(message)
            return Outcome(JobState.failure, message)
        image = await job_image(self.images, pipeline.image or self.settings.runner.image, checkout.workspace,
                                checkout.snapshot, job.spec, joblog, attempt.cancel)
        if isinstance(image, Outcome):
            return image
        caches = await self._cache_plan(job, pipeline, checkout.workspace, image, local_path, joblog)
        cache_env = {name: value for plan in caches for name, value in plan.env.items()}
        env = job_environment(job, pipeline, checkout.sha, cache_env, self.secrets, joblog.system)
        return Plan(pipeline, steps, image, caches, env, pipeline.timeout or self.settings.runner.job_timeout)

    async def _missing_image(self, pipeline: Pipeline) -> str | None:
        """Why the pipeline's own image cannot run, or None. An image the pipeline names and this runner lacks is
        the pipeline's fault, and retrying cannot fix it. The server's default image (`runner.image`, also when a
        pipeline names it) is not checked here: its absence is the runner's fault, retried when the container
        cannot start. An engine that does not answer raises EngineError (infrastructure)."""
        image = pipeline.image
        if image is None or isinstance(image, ImageBuild) or image == self.settings.runner.image \
                or await self.engine.image_exists(image):
            return None
        return missing_image_message(image)

    async def _cache_plan(
        self, job: Job, pipeline: Pipeline, workspace: Path, image: str, local_path: Path | None, joblog: JobLog,
    ) -> tuple[CachePlan, ...]:
        """What the job caches, entry by entry; `forgeci run` keeps none (its data dir is thrown away after the run)."""
        if self.cache is None or local_path is not None:
            return ()
        plans = await asyncio.to_thread(plan_caches, job.spec, pipeline, workspace, image)
        if not plans:
            joblog.system("cache: no [cache] table and no lockfile at the repository root; nothing to cache")
        for plan in plans:
            if plan.detected:
                joblog.system(f"{plan.prefix} detected from {', '.join(plan.key_files)}: {', '.join(plan.paths)}")
        return plans

    # -- steps phase ----------------------------------------------------------------------------------------

    def _box(self, attempt: Attempt, plan: Plan) -> Box:
        """Where the steps will run: a container of its own, or a pod with the job's services."""
        if not plan.pipeline.services:
            return Solo(self.engine, "")
        return JobPod(self.engine, self.layout, attempt.job.id, attempt.job.attempts, plan.pipeline.services,
                      attempt.joblog, self.secrets.masker())

    async def container_spec(self, job_id: int, image: str, workspace: Path) -> ContainerSpec:
        """A job container's spec from the runner settings (the warm pool makes its containers from it too)."""
        runner = self.settings.runner
        if self._limits_apply is None:
            with phase("podman info (do limits apply?)"):
                self._limits_apply = await self.engine.cgroup_limits_apply()
            if not self._limits_apply:
                log.warning("rootless Podman on a cgroup-v1 host ignores memory and pids limits; "
                            "forgeci still enforces step and job timeouts")
        return ContainerSpec(
            job_id=job_id, image=image, workspace=workspace,
            env={"CI": "true"}, network=runner.network, memory=runner.memory, pids_limit=runner.pids_limit,
            ulimits=runner.ulimits, ca_bundle=runner.ca_bundle, limits=self._limits_apply,
        )

    async def _warm(self, job_id: int, box: Box, plan: Plan, checkout: Checkout) -> Checkout:
        """A warm-pool container for a job of the default image without services (runner/warm_pool.py)."""
        if self.warm is None or not isinstance(box, Solo) or plan.image != self.settings.runner.image:
            return checkout
        slot = await self.warm.take()
        if slot is None:
            return checkout
        box.container_id = slot.container_id
        self._slots[job_id] = slot.workspace
        await asyncio.to_thread(adopt, checkout.workspace, slot.workspace)
        return dataclasses.replace(checkout, workspace=slot.workspace)

    async def _start_container(
        self, attempt: Attempt, box: Box, plan: Plan, workspace: Path, deadline: float,
    ) -> Outcome | None:
        """Start the box's containers (a pod's services ready first); an Outcome when its services end the job."""
        runner = self.settings.runner
        if isinstance(box, Solo) and box.container_id:  # a warm-pool container, started ahead of the job
            return None
        spec = await self.container_spec(attempt.job.id, plan.image, workspace)
        if isinstance(box, JobPod):
            limits = Limits(runner.network, runner.memory, runner.pids_limit, tuple(runner.ulimits), self._limits_apply)
            return await box.start(spec, limits) or await box.wait_ready(deadline, attempt.cancel)
        box.container_id = await self.engine.start_job_container(spec)
        return None

    async def _run_steps(
        self, attempt: Attempt, plan: Plan, container_id: str, resume: Resume | None, deadline: float,
    ) -> Outcome:
        """Each step in turn in the job's container, until one ends the job; a resumed job's earlier steps are
        recorded as restored, not run."""
        job, joblog = attempt.job, attempt.joblog
        bash = await self.engine.has_bash(container_id, plan.image)
        joblog.system(f"container {container_id[:12]} from {plan.image}")
        total = len(plan.steps)
        results: list[StepResult] = []
        for index, step in enumerate(plan.steps):
            if resume is not None and index < resume.step:
                results.append(self._restored(attempt, index, total, step, resume))
                continue
            if attempt.cancel.is_set():
                return Outcome(JobState.cancelled, "cancelled", steps=tuple(results))
            attempt.reporter.step_started(job, index, step.name, total)
            result = await self._step(attempt, container_id, bash, index, total, step, plan.env, deadline)
            results.append(result)
            attempt.reporter.step_finished(job, result, total)
            ending = step_verdict(result, step, deadline)
            if ending is not None:
                return Outcome(*ending, steps=tuple(results))
        return Outcome(JobState.success, steps=tuple(results))

    def _restored(self, attempt: Attempt, index: int, total: int, step: Step, resume: Resume) -> StepResult:
        """A step before the resume point: its work is in the snapshot, so it is recorded, not run."""
        attempt.joblog.system(f"step {index + 1}/{total}: {step.name} restored from the snapshot of job "
                              f"{resume.job_id} (not run again)", step=step.name)
        attempt.reporter.step_started(attempt.job, index, step.name, total)
        result = StepResult(index, step.name, StepState.restored, None, 0.0)
        attempt.reporter.step_finished(attempt.job, result, total)
        return result

    async def _step(
        self, attempt: Attempt, container_id: str, bash: bool, index: int, total: int, step: Step,
        env: Mapping[str, str], deadline: float,
    ) -> StepResult:
        joblog, cancel = attempt.joblog, attempt.cancel
        joblog.system(f"step {index + 1}/{total}: {step.name}", step=step.name)
        started = time.monotonic()
        limit = min(step.timeout or self.settings.runner.step_timeout, max(0.0, deadline - started))
        argv = self.engine.step_command(step.run, bash)
        execution = asyncio.ensure_future(
            self.engine.exec(container_id, argv, step_environment(env, step),
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
            state = StepState.success if exit_code == 0 else StepState.failure
        else:
            state = StepState.cancelled if cancel.is_set() else StepState.timeout
            why = "cancelled" if state is StepState.cancelled else f"over its {format_duration(limit)} limit"
            joblog.system(f"stopping step {step.name}: {why}", step=step.name)
            exit_code = await self._stop(container_id, execution,
                                         CANCEL_GRACE if state is StepState.cancelled else TIMEOUT_GRACE)
        joblog.flush(step.name)
        duration = time.monotonic() - started
        mark = {StepState.success: "ok", StepState.failure: "failed"}.get(state, str(state))
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

    # -- keep phase -----------------------------------------------------------------------------------------

    async def _release(self, box: Box, joblog: JobLog) -> bool:
        """Remove the container(s) before the keep phase: no process of the job may change the tree while root
        archives it. False (with a warning, and nothing kept) when the engine would not remove them."""
        try:
            await box.remove()
        except EngineError as exc:
            joblog.system(f"warning: the container could not be removed ({exc}); no cache save or snapshot")
            return False
        return True

    async def _keep(self, attempt: Attempt, plan: Plan, workspace: Path, outcome: Outcome) -> None:
        """Cache save and snapshot, per the pipeline's policies; their failures are warnings, never the job's state."""
        job, joblog, state, say, abort = attempt.job, attempt.joblog, outcome.state, attempt.say, attempt.abort
        saving = tuple(entry for entry in plan.caches if state is JobState.success
                       or entry.save == "always" and state in (JobState.failure, JobState.timeout))
        if saving and self.cache is not None:
            await self._guarded("cache save", joblog, self.cache.save_all, saving, workspace, say, abort, job.id,
                                job.attempts)
        if self.snapshots is not None and should_snapshot(plan.pipeline.snapshot, state):
            failed = outcome.steps[-1] if state is not JobState.success and outcome.steps else None
            await self._guarded(
                "snapshot", joblog, self.snapshots.take, job.id, workspace,
                sha=checked_out_sha(workspace) or job.spec.sha or "", image=plan.image, state=state,
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

    async def _clean_up(self, job_id: int, box: Box | None) -> None:
        """The container or pod (when the keep phase did not remove it) and the workspace, whatever state they are
        in: a half-made checkout (a full disk, a failed fetch) or a half-restored snapshot goes too."""
        if self.deferred is not None and (box is None or isinstance(box, Solo)):
            if box is not None and box.container_id:
                self.deferred.append(box.container_id)
            return
        if box is not None:
            try:
                await box.remove()
            except EngineError as exc:
                log.warning("job %d: could not remove its container (retried once the engine answers): %s",
                            job_id, exc)
                self._strays.append(box)
        try:
            with phase("workspace removal"):
                await self.workspaces.remove(job_id)  # a warm-pool job's: the link to its slot folder
                slot = self._slots.pop(job_id, None)
                if slot is not None:
                    await self.engine.remove_tree(slot)
        except RunnerError as exc:
            log.warning("job %d: could not remove its workspace: %s", job_id, exc)
