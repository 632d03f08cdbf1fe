"""Job control: every state change of a job — its queue transaction, its event and the worker's wake-up or stop.

The HTTP API, the dashboard, the webhook intake, the embedded worker pool and the agent API (bot/agent_api.py, for
remote `forgeci agent`s) all call this one module, so each operation exists once. It knows no transport: plain async
methods over values.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from runner.committer import DeliveryCommitter
from runner.errors import InvalidTransition, QueueError, QuotaExceeded
from runner.events import EventBus, JobEvent, PipelineEvent
from runner.models import Job, JobSpec, JobState, Outcome, PipelineRecord, PipelineState, StepResult
from runner.persist import StepWrites, is_fault, persist
from runner.planner import PlanResult, Planner
from runner.queue import Delivery, Queue, Settlement
from runner.queue.usage import repo_slug
from runner.retry import RESUMABLE, RESUME_FROM, RESUME_STEP, RETRY_OF

PLAN_TIMEOUT = 60.0  # seconds POST /jobs/submit waits for its pipeline's plan (a fetch) before answering

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    """Who runs claimed jobs in this process (the embedded worker pool): told when to look and what to stop."""

    def wake(self) -> None: ...

    def cancel(self, job_id: int) -> None: ...


@dataclass(frozen=True)
class Submitted:
    """A submitted pipeline and its planned jobs (none yet while its fetch is retried)."""

    pipeline_id: int
    job_ids: tuple[int, ...]


def retry_spec(queue: Queue, job_id: int, *, from_failed_step: bool = False) -> JobSpec:
    """The spec of a new job like `job_id` (which must be finished); its meta says which job it retries.

    With `from_failed_step`, the new job restores the failure snapshot of `job_id` into a fresh workspace, at the
    same commit, and runs from the step that failed; the job must have failed (or timed out) in a step and have a
    snapshot (pipeline `snapshot` policy `always` or `on_failure`, not yet pruned). InvalidTransition otherwise.
    """
    job = queue.get(job_id)
    if not job.state.is_terminal:
        raise InvalidTransition(f"job {job_id} is {job.state}; only a finished job can be retried")
    meta = {k: v for k, v in job.spec.meta.items() if k not in (RESUME_FROM, RESUME_STEP)}
    meta[RETRY_OF] = str(job_id)
    spec = job.spec
    if from_failed_step:
        if job.state not in RESUMABLE:
            raise InvalidTransition(f"job {job_id} is {job.state}; only a job that failed in a step can be retried "
                                    f"from its failed step")
        snapshot = queue.snapshot(job_id)
        if snapshot is None:
            raise InvalidTransition(f"job {job_id} has no workspace snapshot (its pipeline's `snapshot` policy, a "
                                    f"failed upload, or it was pruned); retry it without --from-failed-step")
        if snapshot.failed_step is None:
            raise InvalidTransition(f"the snapshot of job {job_id} records no failed step")
        meta |= {RESUME_FROM: str(job_id), RESUME_STEP: str(snapshot.failed_step)}
        spec = dataclasses.replace(spec, sha=snapshot.sha or spec.sha)
    return dataclasses.replace(spec, meta=meta)


class JobControl:
    """The one place jobs change state. Queue work runs in threads (SQLite may wait for another writer)."""

    def __init__(self, queue: Queue, events: EventBus, planner: Planner | None = None, *,
                 lease_seconds: float = 60.0) -> None:
        self.queue = queue
        self.lease_seconds = lease_seconds
        # A networked queue (PostgreSQL) writes step rows off the loop (runner.persist); SQLite's are local writes.
        self._steps = StepWrites() if getattr(queue, "remote", False) else None
        self._outage = False  # the database failed a lease write: every lease gets renewed before the next expiry
        # Jobs whose requeue committed but whose `queued` event is not out yet. On PostgreSQL the commit's NOTIFY
        # can wake a worker whose claim of the job returns before record() resumes: its `running` event waits for
        # the `queued` one, or a live list would end on `queued` for a running job.
        self._requeueing: dict[int, asyncio.Event] = {}
        self.events = events
        self.planner = planner  # None: pipelines wait `planning` for a coordinator that has one
        if planner is not None:
            planner.on_planned = self.planned
        self.dispatcher: Dispatcher | None = None  # set by the embedded worker pool when it starts
        self._committer = DeliveryCommitter()

    # -- what users, clients and forges ask for ----------------------------------------------------------------

    async def submit(self, spec: JobSpec) -> int:
        """Enqueue one job of no pipeline (`forgeci run`, tests); runners look for it at once."""
        job_id = await asyncio.to_thread(self.queue.enqueue, spec)
        self.publish(job_id, JobState.queued, priority=spec.priority, repo=spec.repo, ref=spec.ref)
        self._wake()
        return job_id

    async def submit_pipeline(self, spec: JobSpec, *, timeout: float = PLAN_TIMEOUT) -> Submitted:
        """A pipeline for `spec`, planned before this returns (bounded by `timeout`; an inline pipeline needs no
        fetch). Its jobs are empty when planning must wait: the coordinator's planner goes on with it. QuotaExceeded
        (nothing recorded) when a [[quotas]] rule refuses it."""
        refusal = await asyncio.to_thread(self.queue.quota_refusal, repo_slug(spec.repo))
        if refusal is not None:
            raise QuotaExceeded(refusal)
        pipeline_id = await asyncio.to_thread(self.queue.create_pipeline, spec)
        self.publish_pipeline(pipeline_id, PipelineState.planning)
        job_ids: tuple[int, ...] = ()
        if self.planner is not None:
            record = await asyncio.to_thread(self.queue.pipeline, pipeline_id)
            try:
                result = await asyncio.wait_for(self.planner.plan(record), timeout)
            except TimeoutError:  # the plan goes on (it is shielded); the answer does not wait for it
                result = None
            job_ids = tuple(result[0]) if result else ()
            if (rejected := self.planner.rejected.pop(pipeline_id, None)) is not None:
                raise rejected  # its inputs: the pipeline ended, and the caller hears why
        return Submitted(pipeline_id, job_ids)

    async def planned(self, record: PipelineRecord, result: PlanResult | None) -> None:
        """What planning did (the planner's loop and submit_pipeline report here): events, wake-up."""
        if result is None:
            self._apply(self.queue.take_settlements())
            now = await asyncio.to_thread(self.queue.pipeline, record.id)
            # Still planning: a fetch fault, planned again after a back-off (its commit status says so, as a
            # requeued job's did); otherwise it ended meanwhile (cancelled, or out of retries: error).
            attempts = now.plan_attempts if now.state is PipelineState.planning else None
            self.publish_pipeline(record.id, now.state, error=now.error, attempts=attempts)
            return
        job_ids, settled = result
        ruled_out = {job_id for job_id, _ in settled.skipped}  # planned `skipped`: never queued
        for job_id in job_ids:
            if job_id not in ruled_out:
                self.publish(job_id, JobState.queued, pipeline=record.id)
        self.publish_pipeline(record.id, settled.state or PipelineState.queued, jobs=list(job_ids))
        self._apply([settled, *self.queue.take_settlements()])
        self._wake()

    async def retry_pipeline(self, pipeline_id: int, *, failed_only: bool = False) -> Submitted:
        """A finished pipeline again: a new pipeline at the same sha, or (`failed_only`) its failed jobs and the ones
        they skipped, in the same pipeline, reusing what succeeded."""
        record = await asyncio.to_thread(self.queue.pipeline, pipeline_id)
        if not record.state.is_terminal:
            raise InvalidTransition(f"pipeline {pipeline_id} is {record.state}; only a finished one can be retried")
        if failed_only:
            job_ids, settled = await asyncio.to_thread(self.queue.retry_failed, pipeline_id)
            for job_id in job_ids:
                self.publish(job_id, JobState.queued, pipeline=pipeline_id, retry="failed")
            self._apply([settled, *self.queue.take_settlements()])
            self._wake()
            return Submitted(pipeline_id, tuple(job_ids))
        meta = {**record.spec.meta, "retry_of_pipeline": str(pipeline_id)}
        return await self.submit_pipeline(dataclasses.replace(record.spec, sha=record.sha or record.spec.sha,
                                                              meta=meta))

    async def cancel_pipeline(self, pipeline_id: int) -> PipelineState:
        """Cancel a pipeline: queued jobs end now, running ones are stopped, no `always` job runs after."""
        settled = await asyncio.to_thread(self.queue.cancel_pipeline, pipeline_id)
        self._apply([settled, *self.queue.take_settlements()])
        return (await asyncio.to_thread(self.queue.pipeline, pipeline_id)).state

    async def commit_delivery(
        self, forge: str, delivery: str, specs: Sequence[JobSpec], *, supersede: bool,
    ) -> Delivery:
        """Record a forge delivery with its pipelines (group-committed with the deliveries arriving with it), for the
        planner to plan; with `supersede`, cancel the older unfinished pipelines of each one's concurrency group. A
        redelivery changes nothing and answers with what the first delivery made."""
        result = await self._committer.commit(self.queue, forge, delivery, list(specs), supersede)
        if result.redelivery:
            return result
        for pipeline_id in result.pipeline_ids:
            self.publish_pipeline(pipeline_id, PipelineState.planning)
        # The superseded pipelines and their jobs, with the reason: each settlement is taken once, by whichever
        # caller comes first (another delivery's, maybe of the next batch; all are committed already).
        self._apply(self.queue.take_settlements())
        newest = result.pipeline_ids[-1] if result.pipeline_ids else None
        for job_id in result.loose_cancelled:  # jobs of no pipeline: no settlement says it for them
            self.publish(job_id, JobState.cancelled, error=f"superseded by pipeline {newest}")
        for job_id in result.loose_stopping:
            self._stop(job_id)
        if self.planner is not None:
            self.planner.wake()
        return result

    async def cancel(self, job_id: int) -> JobState:
        """A queued job ends `cancelled` now; a running one is flagged and its runner stops it (returns running)."""
        state = await asyncio.to_thread(self.queue.cancel, job_id)
        if state is JobState.running:
            self.publish(job_id, state, "cancel_requested")
            self._stop(job_id)
        else:
            self.publish(job_id, state)
        self._apply(self.queue.take_settlements())
        return state

    async def retry(self, job_id: int, *, from_failed_step: bool = False) -> int:
        """A new job like a finished one (see retry_spec); returns its id. QuotaExceeded when a [[quotas]] rule
        refuses new work of its repository (as it refuses a new pipeline)."""

        def enqueue() -> int:
            spec = retry_spec(self.queue, job_id, from_failed_step=from_failed_step)
            refusal = self.queue.quota_refusal(repo_slug(spec.repo))
            if refusal is not None:
                raise QuotaExceeded(refusal)
            return self.queue.enqueue(spec)

        new_id = await asyncio.to_thread(enqueue)
        self.publish(new_id, JobState.queued, retry_of=job_id)
        self._wake()
        return new_id

    async def set_priority(self, job_id: int, priority: int) -> None:
        """Move a queued job to another priority (FIFO within it)."""
        await asyncio.to_thread(self.queue.set_priority, job_id, priority)
        self.publish(job_id, JobState.queued, "priority", priority=priority)

    # -- what runners report ----------------------------------------------------------------------------------

    async def claim(self, runner_id: str, lease_seconds: float, labels: Sequence[str] | None = ()) -> Job | None:
        """The next runnable job under a lease for `runner_id` (one whose runs_on `labels` has; None: any job),
        or None."""
        job = await asyncio.to_thread(self.queue.claim, runner_id, lease_seconds, labels)
        if job is not None:
            if (requeued := self._requeueing.get(job.id)) is not None:
                await requeued.wait()  # its requeue's `queued` event first (see __init__)
            self.publish(job.id, JobState.running, attempts=job.attempts, runner=runner_id)
            self._apply(self.queue.take_settlements())  # its pipeline started
        return job

    async def heartbeat(self, job_id: int, runner_id: str, lease_seconds: float) -> bool:
        """Extend the lease; False means the job is no longer this runner's and it must stop it."""
        try:
            return await asyncio.to_thread(self.queue.heartbeat, job_id, runner_id, lease_seconds)
        except QueueError as exc:
            self._outage = self._outage or is_fault(exc)
            raise

    async def cancel_requested(self, job_id: int) -> bool:
        return await asyncio.to_thread(self.queue.is_cancel_requested, job_id)

    async def begin_attempt(self, job_id: int) -> None:
        """Forget the step rows of an earlier attempt before this one records its own."""
        await asyncio.to_thread(self.queue.reset_steps, job_id)

    def checked_out(self, job: Job, sha: str) -> None:
        """A job submitted without a sha records the commit it runs, so every view (and a retry) shows it."""
        if self._steps is not None:
            self._steps.add(job.id, lambda: self.queue.set_sha(job.id, sha), f"job {job.id}: its sha")
        elif not self.queue.set_sha(job.id, sha):
            return
        self.publish(job.id, JobState.running, "sha", sha=sha)

    def step_started(self, job: Job, index: int, name: str, total: int) -> None:
        """Called on the loop by the executor as a step starts (a short write, like the log's; on PostgreSQL
        queued behind the job's earlier step writes, off the loop)."""
        if self._steps is not None:
            self._steps.add(job.id, lambda: self.queue.start_step(job.id, index, name),
                            f"job {job.id}: step {index}")
        else:
            self.queue.start_step(job.id, index, name)
        self.publish(job.id, JobState.running, "step", index=index, name=name, total=total)

    def step_finished(self, job: Job, result: StepResult, total: int) -> None:
        if self._steps is not None:
            self._steps.add(job.id, lambda: self.queue.finish_step(job.id, result.index, result.state,
                                                                   result.exit_code),
                            f"job {job.id}: step {result.index}")
        else:
            self.queue.finish_step(job.id, result.index, result.state, result.exit_code)
        self.publish(job.id, JobState.running, "step_done", index=result.index, name=result.name, total=total,
                     step_state=str(result.state), duration=result.duration)

    async def record(self, job: Job, outcome: Outcome, runner_id: str, *, requeue: str | None = None) -> JobState | None:
        """Record how an attempt ended. Infrastructure faults (and `requeue`, the reason a runner gives back a job
        it stopped for its own sake) go back to the queue while retries remain. None when the lease was lost:
        another runner, or the expiry, owns the job now. A fault of the database (PostgreSQL restarting) is retried
        until it answers (runner.persist): the end of a job is never dropped while its runner holds it."""
        if self._steps is not None:
            await self._steps.flush(job.id)
        requeues = outcome.infra or requeue is not None
        published = self._requeueing.setdefault(job.id, asyncio.Event()) if requeues else None
        try:
            if requeues:
                reason = requeue or outcome.error or "infrastructure error"
                state = await persist(lambda: self.queue.fail_infra(job.id, reason, runner_id), f"job {job.id}'s end")
            else:
                await persist(lambda: self.queue.complete(job.id, outcome.state, outcome.error, runner_id,
                                                          outcome.outputs), f"job {job.id}'s end")
                state = outcome.state
        except QueueError as exc:
            log.warning("job %d: outcome %s not recorded: %s", job.id, outcome.state, exc)
            return None
        else:
            self.publish(job.id, state, error=outcome.error if requeue is None else requeue)
        finally:
            if published is not None:
                self._requeueing.pop(job.id, None)
                published.set()
        self._apply(self.queue.take_settlements())
        if state is JobState.queued:
            self._wake()
        return state

    async def expire_leases(self) -> list[int]:
        """Requeue (or end `error`) every running job whose runner stopped renewing its lease. After the database
        was away (a failed heartbeat or expiry) every running job first gets a lease from now: no runner could renew
        one meanwhile, and its job must not be run twice for the database's outage."""
        try:
            if self._outage:
                renewed = await asyncio.to_thread(self.queue.extend_leases, self.lease_seconds)
                self._outage = False
                log.info("the queue answers again: %d running job(s) got a fresh lease", renewed)
            expired = await asyncio.to_thread(self.queue.expire_leases)
        except QueueError as exc:
            self._outage = self._outage or is_fault(exc)
            raise
        for job_id in expired:
            self.publish(job_id, (await asyncio.to_thread(self.queue.get, job_id)).state, error="lease expired")
        self._apply(self.queue.take_settlements())
        return expired

    async def settle_all(self) -> None:
        """Settle every unfinished pipeline (the coordinator's start: nothing may wait on a finished need)."""
        self._apply([*await asyncio.to_thread(self.queue.settle_all), *self.queue.take_settlements()])

    async def requeue_orphans(self, is_ours: Any, reason: str, keep: frozenset[int] = frozenset()) -> list[int]:
        """After a crash: every running job whose runner id `is_ours` (a predicate) and that is not in `keep` goes
        back to the queue (attempts + 1) or ends `error`, at once instead of after its lease."""
        orphans = [job for job in await asyncio.to_thread(self.queue.running_jobs)
                   if job.runner_id is not None and is_ours(job.runner_id) and job.id not in keep]
        for job in orphans:
            try:
                state = await asyncio.to_thread(self.queue.fail_infra, job.id, reason, job.runner_id)
            except QueueError as exc:  # it ended meanwhile
                log.info("job %d: not requeued: %s", job.id, exc)
                continue
            log.info("job %d was running when its runner %s stopped: now %s", job.id, job.runner_id, state)
            self.publish(job.id, state, error=reason)
        self._apply(self.queue.take_settlements())
        if orphans:
            self._wake()
        return [job.id for job in orphans]

    # -- events and the dispatcher ------------------------------------------------------------------------------

    def publish(self, job_id: int, state: JobState | str, kind: str = "state", **data: Any) -> None:
        self.events.publish(JobEvent(job_id, str(state), kind, {k: v for k, v in data.items() if v is not None}))

    def publish_pipeline(self, pipeline_id: int, state: PipelineState | str, **data: Any) -> None:
        self.events.publish(PipelineEvent(pipeline_id, str(state), {k: v for k, v in data.items() if v is not None}))

    def _apply(self, settlements: Sequence[Settlement]) -> None:
        """Publish what settling pipelines changed, and stop the jobs it flagged."""
        for settled in settlements:
            for job_id, why in settled.skipped:
                self.publish(job_id, JobState.skipped, error=why)
            for job_id in settled.cancelled:
                self.publish(job_id, JobState.cancelled, error=settled.reason)
            for job_id in settled.stopping:
                self.publish(job_id, JobState.running, "cancel_requested")
                self._stop(job_id)
            for job_id in settled.ready:
                self.publish(job_id, JobState.queued, "ready")
            if settled.state is not None:
                self.publish_pipeline(settled.pipeline_id, settled.state, error=settled.reason)
            if settled.ready:
                self._wake()

    def _wake(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.wake()

    def _stop(self, job_id: int) -> None:
        if self.dispatcher is not None:
            self.dispatcher.cancel(job_id)
