"""`forgeci run`: a local checkout's pipeline, every job of it, on the same engine and job control as a server."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from config import inputs
from config.errors import ConfigError
from config.pipeline import Pipeline, load_pipeline
from config.plan import expand
from config.settings import Settings
from runner.artifacts.local import LAST_RUN, keep_last_run
from runner.checkout import checkout_top, safe_git
from runner.control import JobControl
from runner.engine import Engine
from runner.errors import InvalidTransition, RunnerError
from runner.executor import CANCEL_GRACE, Executor, Outcome
from runner.local_report import JobPrinter, LocalJob, Printers, Terminal, one_job_summary, pipeline_summary
from runner.local_select import Named, Selection, SelectionError, select
from runner.models import Job, JobSpec, JobState, PipelineState
from runner.planner import ONE_JOB, PIPELINE_FILE, planned_rows
from runner.image_build import ImageBuilder
from runner.runtime import Runtime, open_runtime
from runner.timings import Timings, phase

__all__ = ["LOCAL_RUNNER", "LocalJob", "LocalPlan", "LocalRun", "SelectionError", "local_plan", "run_local"]

log = logging.getLogger(__name__)

LOCAL_RUNNER = "local"
LEASE = 24 * 3600.0  # no pool expires leases in a run's private queue: a lease only has to outlive the run
STOP_WAIT = CANCEL_GRACE + 5.0  # after Ctrl-C, a running step gets SIGTERM, CANCEL_GRACE, then SIGKILL


def _git(path: Path, *args: str) -> str:
    result = subprocess.run([*safe_git(path), *args], capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


@dataclass(frozen=True)
class LocalRun:
    """How a local run ended: its pipeline's state and every job it planned, in plan order."""

    state: PipelineState
    jobs: tuple[LocalJob, ...]
    one_job: bool  # a file of top-level [[steps]] (or no usable file): printed as `forgeci run` always did
    artifacts: Path | None = None  # where the run's kept artifacts are, unpacked (replaced by the next run)

    @property
    def succeeded(self) -> bool:
        """Exit 0: the pipeline succeeded and ran something. A run whose every job was skipped (the pipeline's
        `branches` leave out the checkout's branch) ran nothing, and exits 1 as a skipped one-job run always did."""
        return self.state is PipelineState.success and any(j.state is not JobState.skipped for j in self.jobs)


@dataclass(frozen=True)
class LocalPlan:
    """What the working tree's file and the command line make, decided before any container engine starts."""

    pipeline: Pipeline | None  # None: no usable file; the one job reads it from its copy and fails with its messages
    selection: Selection
    step: str | None

    @property
    def one_job(self) -> bool:
        return self.pipeline is None or not self.pipeline.jobs


def local_plan(path: Path, jobs: Sequence[str] = (), *, with_needs: bool = False,
               step: str | None = None) -> LocalPlan:
    """Read `path`'s pipeline file and select its jobs (local_select.select). A missing or invalid file is the
    run's failure, as it always was — unless `jobs` names jobs, which such a file cannot have: then its
    ConfigError (a usage error) is raised."""
    file = path / PIPELINE_FILE
    pipeline: Pipeline | None = None
    problem: ConfigError | None = None
    try:
        pipeline = load_pipeline(file) if file.is_file() else None
    except ConfigError as exc:
        problem = exc
    if pipeline is None and jobs:
        raise problem or SelectionError(f"--job: {path} has no {PIPELINE_FILE} (forgeci init writes one)")
    planned = expand(pipeline, str(file)) if pipeline is not None else (Named(ONE_JOB, ONE_JOB),)
    return LocalPlan(pipeline, select(planned, jobs, with_needs=with_needs, step=step), step)


class LocalDispatcher:
    """Runs a local pipeline's jobs as job control makes them claimable: it is the control's Dispatcher, woken when
    a job's needs are done and told which running job to stop (fail_fast). What may run — needs, `if`, skips,
    max_parallel, max_concurrent (`--parallel`) — the queue decides, exactly as on a server; this only starts each
    claimed job on a copy of the working tree, and records how it ended."""

    def __init__(self, control: JobControl, executor: Executor, path: Path, printers: Callable[[Job], JobPrinter],
                 *, step_job: str | None = None, step: str | None = None) -> None:
        self.control = control
        self.executor = executor
        self.path = path
        self.printers = printers
        self.step_job, self.step = step_job, step
        self.outcomes: dict[int, Outcome] = {}
        self._wake = asyncio.Event()
        self._running: dict[int, tuple[asyncio.Task[None], asyncio.Event]] = {}

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, job_id: int) -> None:
        entry = self._running.get(job_id)
        if entry is not None:
            entry[1].set()

    async def run(self, pipeline_id: int) -> None:
        """Claim and run until nothing runs and nothing can be claimed: then every job has ended (a queued job
        waits only on active needs, so with none running some job would be claimable)."""
        try:
            while True:
                self._wake.clear()
                while (job := await self.control.claim(LOCAL_RUNNER, LEASE, None)) is not None:
                    cancel = asyncio.Event()
                    self._running[job.id] = (asyncio.create_task(self._run(job, cancel)), cancel)
                if not self._running:
                    return
                await self._wake.wait()
        except asyncio.CancelledError:  # Ctrl-C: stop the running jobs (their containers go), end the rest
            try:
                await self.control.cancel_pipeline(pipeline_id)
            except InvalidTransition:
                pass
            for _, cancel in self._running.values():
                cancel.set()
            if self._running:
                await asyncio.wait([task for task, _ in self._running.values()], timeout=STOP_WAIT)
            raise

    async def _run(self, job: Job, cancel: asyncio.Event) -> None:
        printer = self.printers(job)
        only = self.step if job.display == self.step_job else None
        try:
            outcome = await self.executor.run(job, cancel, printer, only_step=only, local_path=self.path,
                                              on_line=printer.line)
        except Exception as exc:  # a bug must neither kill the run nor leave the job's dependants waiting
            log.exception("job %d crashed the local run", job.id)
            outcome = Outcome(JobState.error, f"internal error: {exc}")
        if outcome.infra:  # nobody retries a local run: an infrastructure fault is its final word
            outcome = dataclasses.replace(outcome, state=JobState.error, infra=False)
        self.outcomes[job.id] = outcome
        try:
            await self.control.record(job, outcome, LOCAL_RUNNER)
        finally:
            self._running.pop(job.id, None)
            self.wake()


async def _run_pipeline(runtime: Runtime, path: Path, plan: LocalPlan, printers: Printers, keep: Path) -> LocalRun:
    """Plan the selected jobs into a pipeline of the run's private queue, each with its one-job pipeline inline
    (as a server plans a submitted pipeline), and run them to the end; their artifacts end up in `keep`."""
    control, queue = runtime.control, runtime.queue
    spec = JobSpec(repo=str(path), ref=_git(path, "rev-parse", "--abbrev-ref", "HEAD") or "local",
                   sha=_git(path, "rev-parse", "HEAD") or None, event="manual")
    pipeline_id = await asyncio.to_thread(queue.create_pipeline, spec)
    record = await asyncio.to_thread(queue.pipeline, pipeline_id)
    declared = plan.pipeline.inputs if plan.pipeline is not None else {}
    defaults = inputs.resolve(declared, {}, manual=False)  # no --input here: the declared defaults
    rows = plan.selection.rows(planned_rows(record, plan.pipeline, spec.sha, inputs=defaults))
    dispatcher = LocalDispatcher(control, runtime.executor, path, printers, step_job=plan.selection.step_job,
                                 step=plan.step)
    control.dispatcher = dispatcher
    try:
        await control.planned(record, await asyncio.to_thread(queue.write_plan, pipeline_id, spec.sha, rows))
        await dispatcher.run(pipeline_id)
    finally:
        control.dispatcher = None
    done = await asyncio.to_thread(queue.pipeline, pipeline_id)
    if not done.state.is_terminal:  # only a bug in settling could leave a job waiting with nothing running
        raise RunnerError(f"the local pipeline is still {done.state}, and no job of it can run")
    jobs = []
    for job_id in done.job_ids:
        job = await asyncio.to_thread(queue.get, job_id)
        outcome = dispatcher.outcomes.get(job_id)
        jobs.append(LocalJob(display=job.display or job.name or ONE_JOB, state=job.state, error=job.error,
                             duration=job.duration, steps=outcome.steps if outcome else ()))
    kept = await asyncio.to_thread(keep_last_run, queue, runtime.store, pipeline_id, keep,
                                   lambda text: printers.terminal.write(f"warning: {text}\n"))
    return LocalRun(done.state, tuple(jobs), plan.one_job, kept)


async def run_local(
    settings: Settings, path: Path, *, step: str | None = None, jobs: Sequence[str] = (), with_needs: bool = False,
    parallel: int | None = None, environ: Mapping[str, str] = os.environ, out: TextIO | None = None,
    engine: Engine | None = None, timings: Timings | None = None,
) -> LocalRun:
    """Run the pipeline of the checkout at `path`, its working tree as it is (each job on its own copy, in its own
    container), up to `parallel` (default `queue.max_concurrent`) jobs at once; the jobs never enter a server's
    queue. `jobs`, `with_needs` and `step` select (local_select.select); SelectionError before anything starts.
    `engine` defaults to rootless Podman (tests pass a fake). A folder that is not the top of a git checkout is a
    ConfigError, before anything starts. `timings` (--timings) gets every phase's time and is printed after the
    summary."""
    if timings is not None:
        timings.activate()
    path = checkout_top(path.resolve())
    if parallel is not None and parallel < 1:
        raise SelectionError(f"--parallel must be at least 1, got {parallel}")
    with phase("plan (selection)"):
        plan = local_plan(path, jobs, with_needs=with_needs, step=step)
    # A private data dir: a `forgeci serve` on the same machine must neither claim nor reap these jobs.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=settings.data_dir))
    # ... and a private SQLite queue in it, whatever queue.url names (a server's PostgreSQL is for its jobs).
    queue = dataclasses.replace(settings.queue, max_concurrent=parallel or settings.queue.max_concurrent, url="")
    # Artifacts pass between the jobs through the scratch store (never the working tree, which the next job would
    # copy), whatever store the settings name.
    local = dataclasses.replace(settings, data_dir=scratch, queue=queue,
                                storage=dataclasses.replace(settings.storage, url=""))
    terminal = Terminal(out or sys.stdout)  # looked up now: tests and callers may have replaced sys.stdout
    started = time.monotonic()
    deferred: list[str] | None = None
    remove_detached: Callable[..., None] | None = None
    try:
        with phase("runtime (queue, store, engine)"):
            opened = open_runtime(local, environ, workers=False, engine=engine)
            runtime = await opened.__aenter__()
        try:
            # Repository images: use records in the real data dir (its maintenance prunes them), no store export.
            runtime.executor.images = ImageBuilder.for_settings(local.runner, runtime.user, settings.data_dir,
                                                                lookup=runtime.engine.image_id)
            # The real engine removes the containers and the scratch data dir after we exit (off the critical path).
            remove_detached = getattr(runtime.engine, "remove_detached", None)
            if remove_detached is not None:
                runtime.executor.deferred = deferred = []
            run = await _run_pipeline(runtime, path, plan, Printers(terminal, prefixed=not plan.one_job),
                                      settings.data_dir / LAST_RUN)
        finally:
            with phase("runtime teardown"):
                await opened.__aexit__(*sys.exc_info())
    finally:
        with phase("scratch data dir removal"):
            if remove_detached is not None and deferred is not None:
                remove_detached(deferred, [scratch / "workspaces"], [scratch])
            else:
                await asyncio.to_thread(shutil.rmtree, scratch, True)
    if run.one_job:
        one_job_summary(terminal, run.jobs[0])
    else:
        pipeline_summary(terminal, run.state, run.jobs, time.monotonic() - started)
    if run.artifacts is not None:
        terminal.write(f"artifacts of this run: {run.artifacts}\n")
    if timings is not None:
        timings.report(terminal.out)
    return run
