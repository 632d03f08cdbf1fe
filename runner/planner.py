"""Planning: a `planning` pipeline becomes jobs — the sha pinned from the mirror, `.forgeci.toml` read with
`git show` (no workspace), its jobs and matrices expanded and written in one transaction.

The coordinator (the process holding the data dir) plans: right away for `POST /jobs/submit`, in the background
for webhook deliveries, which never wait for the network. A fetch fault is an infrastructure fault, retried with
back-off up to `queue.max_retries`, then the pipeline ends `error`; a bad file is the pipeline's fault: one job
that ends `failure` with the file's messages, as a one-job pipeline always did.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

from config.errors import ConfigError
from config.pipeline import Pipeline, parse_pipeline, pipeline_from_dict, pipeline_to_dict
from config.plan import DEFAULT_JOB, expand
from runner.errors import InvalidTransition, QueueError, WorkspaceError
from runner.job_rules import PIPELINE_FILE
from runner.models import PipelineRecord
from runner.plan_filters import changes_for, run_inputs, skip_reasons
from runner.queue import PlannedJobRow, Queue, Settlement
from runner.queue.usage import repo_slug
from runner.workspace import Workspaces

log = logging.getLogger(__name__)

ONE_JOB = DEFAULT_JOB  # the job a file of top-level [[steps]] (or a file with errors) makes
BACKOFF_BASE = 2.0  # seconds before the first re-plan after a fetch fault; doubles each time
BACKOFF_CAP = 60.0
IDLE = 30.0  # seconds between looks at the pipelines table when nothing woke the planner
MAX_REJECTED = 100

PlanResult = tuple[list[int], Settlement]  # the planned jobs' ids, and what writing them settled
PlanListener = Callable[[PipelineRecord, "PlanResult | None"], Awaitable[None]]


def planned_rows(record: PipelineRecord, pipeline: Pipeline | None, sha: str | None,
                 changed: tuple[str, ...] | None = None, inputs: dict[str, str] | None = None) -> list[PlannedJobRow]:
    """The jobs of a pipeline: each inherits the trigger's spec at the pinned sha, with its own one-job pipeline.
    `pipeline` None (a file with errors, or none): one job that reads the file after its checkout and fails
    with the file's own messages. Jobs the filters rule out (`changed`: the files the event changed) are
    planned `skipped`; `inputs` (INPUT_<KEY>) join every job's environment."""
    base = dataclasses.replace(record.spec, sha=sha or record.spec.sha, env={**record.spec.env, **(inputs or {})})
    if pipeline is None:
        return [PlannedJobRow(spec=dataclasses.replace(base, pipeline=None), name=ONE_JOB, display=ONE_JOB)]
    rows = []
    planned = expand(pipeline)
    for job, skip in zip(planned, skip_reasons(pipeline, planned, record.spec.event, changed), strict=True):
        meta = {**base.meta, "pipeline": str(record.id), "job": job.display}
        spec = dataclasses.replace(base, pipeline=pipeline_to_dict(job.pipeline), meta=meta)
        rows.append(PlannedJobRow(spec=spec, name=job.name, display=job.display, needs=tuple(job.needs),
                                  condition=job.condition, continue_on_error=job.continue_on_error,
                                  fail_fast=job.fail_fast, max_parallel=job.max_parallel, skip=skip))
    return rows


class Planner:
    """Plans pipelines for one queue; `plan` for one pipeline now, `run` for every pipeline as it comes."""

    def __init__(self, queue: Queue, workspaces: Workspaces, *, max_retries: int) -> None:
        self.queue = queue
        self.workspaces = workspaces
        self.max_retries = max_retries
        self.on_planned: PlanListener | None = None  # told of every attempt, once (job control publishes it)
        self._wake = asyncio.Event()
        self._inflight: dict[int, asyncio.Future[PlanResult | None]] = {}  # submit and the loop may meet
        self.rejected: dict[int, ConfigError] = {}  # pipelines ended for their inputs, until their submit asks

    def wake(self) -> None:
        self._wake.set()

    async def plan(self, record: PipelineRecord) -> PlanResult | None:
        """One attempt at planning `record`: (job ids, the queue's settlement), or None when it stays planning
        (a fetch fault: retried later) or ended meanwhile. A plan already under way (the loop's, a submit's) is
        awaited, not started twice."""
        running = self._inflight.get(record.id)
        if running is None:
            running = self._inflight[record.id] = asyncio.ensure_future(self._plan(record))
            running.add_done_callback(lambda _: self._inflight.pop(record.id, None))
        return await asyncio.shield(running)

    async def _plan(self, record: PipelineRecord) -> PlanResult | None:
        result = await self._attempt(record)
        if self.on_planned is not None:
            await self.on_planned(record, result)
        return result

    async def _attempt(self, record: PipelineRecord) -> PlanResult | None:
        refusal = await asyncio.to_thread(self.queue.quota_refusal, repo_slug(record.repo), record.id)
        if refusal is not None:  # a webhook's pipeline over a quota ends `error`, its commit status says why
            log.info("pipeline %d refused: %s", record.id, refusal)
            await asyncio.to_thread(self.queue.plan_failed, record.id, refusal, retry_in=None)
            return None
        try:
            sha, pipeline = await self._read(record)
        except WorkspaceError as exc:
            if exc.infra:
                await self._deferred(record, str(exc))
                return None
            sha, pipeline = record.spec.sha, None  # a ref or commit that does not exist: its checkout says so
        try:
            inputs = run_inputs(record.spec, pipeline)
        except ConfigError as exc:  # a manual run's inputs: refused (POST /jobs/submit answers 400)
            await self._rejected(record, exc)
            return None
        changed = None if pipeline is None else await changes_for(self.workspaces, record.spec, sha, pipeline,
                                                                  record.id)
        try:
            rows = planned_rows(record, pipeline, sha, changed, inputs)
            return await asyncio.to_thread(self.queue.write_plan, record.id, sha, rows)
        except InvalidTransition:  # cancelled or superseded while we fetched
            return None

    async def _read(self, record: PipelineRecord) -> tuple[str | None, Pipeline | None]:
        """The pinned sha and the parsed pipeline (None when the file has errors: its job reports them)."""
        spec = record.spec
        if spec.pipeline is not None:  # submitted inline: nothing to fetch
            return spec.sha, _parsed(lambda: pipeline_from_dict(spec.pipeline, "submitted pipeline"))
        sha = await self.workspaces.resolve(spec.repo, spec.ref, spec.sha, lambda text: log.debug("%s", text))
        text = await self.workspaces.read_file(spec.repo, sha, PIPELINE_FILE)
        if text is None:
            return sha, None
        return sha, _parsed(lambda: parse_pipeline(text, PIPELINE_FILE))

    async def _rejected(self, record: PipelineRecord, exc: ConfigError) -> None:
        """End a pipeline whose inputs are wrong, keeping why for the submit that waits for it."""
        first = exc.issues[0] if exc.issues else exc
        more = f" (+{len(exc.issues) - 1} more)" if len(exc.issues) > 1 else ""
        self.rejected[record.id] = exc
        while len(self.rejected) > MAX_REJECTED:  # a submit that timed out never takes its own
            self.rejected.pop(next(iter(self.rejected)))
        await asyncio.to_thread(self.queue.plan_failed, record.id, f"invalid inputs: {first}{more}", retry_in=None)

    async def _deferred(self, record: PipelineRecord, error: str) -> None:
        attempts = record.plan_attempts + 1
        retry_in = None if attempts > self.max_retries else min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempts - 1))
        log.warning("pipeline %d: cannot plan it (attempt %d): %s", record.id, attempts, error)
        await asyncio.to_thread(self.queue.plan_failed, record.id, f"cannot fetch the pipeline: {error}",
                                retry_in=retry_in)
        self.wake()  # the loop may be asleep for IDLE (a submit planned this one): it must see the back-off end

    async def run(self) -> None:
        """Plan every due pipeline, then sleep until the next back-off ends or something wakes us."""
        while True:
            self._wake.clear()
            try:
                for record in await asyncio.to_thread(self.queue.due_plans):
                    await self.plan(record)
                next_at = await asyncio.to_thread(self.queue.next_plan_at)
            except QueueError as exc:
                log.error("planner: %s", exc)
                next_at = None
            wait = IDLE if next_at is None else max(0.05, min(IDLE, next_at - time.time()))
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass


def _parsed(parse: Callable[[], Pipeline]) -> Pipeline | None:
    try:
        return parse()
    except ConfigError:
        return None
