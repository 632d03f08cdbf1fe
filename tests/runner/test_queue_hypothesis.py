"""Stateful property test: random queue operations against a simple in-memory model of the queue."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from runner.errors import InvalidTransition
from runner.models import TERMINAL, JobSpec, JobState
from runner.queue import NewDelivery, Queue
from runner.queue.postgres_queue import PostgresQueue

MAX_CONCURRENT = 3
MAX_RETRIES = 2
RUNNERS = ("r1", "r2", "r3")
GROUPS = (None, "main", "dev")


@dataclass
class ModelJob:
    id: int
    priority: int
    group: str | None
    state: JobState = JobState.queued
    seq: int = 0
    attempts: int = 0
    runner: str | None = None
    lease_expires: float | None = None
    cancel_requested: bool = False


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class QueueMachine(RuleBasedStateMachine):
    """Every rule does one operation on the real queue and on the model, and compares the answers."""

    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="forgeci-queue-")
        self.clock = Clock()
        self.queue = Queue(Path(self.dir) / "q.db", max_concurrent=MAX_CONCURRENT, max_retries=MAX_RETRIES,
                           clock=self.clock)
        self.model: dict[int, ModelJob] = {}
        self.final: dict[int, JobState] = {}  # terminal states as first observed in the database
        self.deliveries = 0  # webhook deliveries so far: each needs a new delivery id

    def teardown(self) -> None:
        self.queue.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the model's rules, written from the contract rather than from the SQL -----------------------

    def running(self) -> list[ModelJob]:
        return [j for j in self.model.values() if j.state == JobState.running]

    def next_claim(self) -> int | None:
        running = self.running()
        if len(running) >= MAX_CONCURRENT:
            return None
        busy = {j.group for j in running if j.group is not None}
        ready = [j for j in self.model.values() if j.state == JobState.queued and j.group not in busy]
        return min(ready, key=lambda j: (-j.priority, j.seq, j.id)).id if ready else None

    def requeue(self, job: ModelJob) -> None:
        if job.cancel_requested:
            job.state = JobState.cancelled
        elif job.attempts <= MAX_RETRIES:
            peers = [j.seq for j in self.model.values() if j.state == JobState.queued and j.priority == job.priority]
            job.state, job.seq, job.runner = JobState.queued, min(peers, default=0) - 1, None
        else:
            job.state = JobState.error
        job.lease_expires = None

    # -- rules --------------------------------------------------------------------------------------

    @rule(target=jobs, priority=st.integers(0, 10), group=st.sampled_from(GROUPS))
    def enqueue(self, priority: int, group: str | None) -> int:
        job_id = self.queue.enqueue(JobSpec(repo="/srv/repo", ref="main", priority=priority, concurrency_group=group))
        assert job_id not in self.model
        self.model[job_id] = ModelJob(job_id, priority, group)
        return job_id

    @rule(runner=st.sampled_from(RUNNERS), lease=st.sampled_from([5.0, 10.0, 30.0]))
    def claim(self, runner: str, lease: float) -> None:
        expected = self.next_claim()
        job = self.queue.claim(runner, lease)
        assert (job.id if job else None) == expected
        if job is not None:
            mine = self.model[job.id]
            assert mine.state == JobState.queued  # never a job someone else is running
            mine.state, mine.runner, mine.attempts = JobState.running, runner, mine.attempts + 1
            mine.lease_expires = self.clock.now + lease
            assert (job.state, job.runner_id, job.attempts) == (JobState.running, runner, mine.attempts)

    @rule(job_id=jobs, runner=st.sampled_from(RUNNERS), lease=st.sampled_from([5.0, 30.0]))
    def heartbeat(self, job_id: int, runner: str, lease: float) -> None:
        job = self.model[job_id]
        expected = job.state == JobState.running and job.runner == runner
        assert self.queue.heartbeat(job_id, runner, lease) == expected
        if expected:
            job.lease_expires = self.clock.now + lease

    @rule(seconds=st.sampled_from([1.0, 5.0, 10.0, 20.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def expire_leases(self) -> None:
        expired = sorted(j.id for j in self.running() if j.lease_expires <= self.clock.now)  # type: ignore[operator]
        assert self.queue.expire_leases() == expired
        for job_id in reversed(expired):  # newest first to the front: the oldest ends up first in line
            self.requeue(self.model[job_id])

    @rule(job_id=jobs, state=st.sampled_from(sorted(TERMINAL)), runner=st.sampled_from((None, *RUNNERS)))
    def complete(self, job_id: int, state: JobState, runner: str | None) -> None:
        job = self.model[job_id]
        allowed = (job.state == JobState.running and runner in (None, job.runner)) or (
            job.state == JobState.queued and runner is None)
        try:
            self.queue.complete(job_id, state, runner_id=runner)
        except InvalidTransition:
            assert not allowed
        else:
            assert allowed
            job.state, job.lease_expires = state, None

    @rule(job_id=jobs, runner=st.sampled_from((None, *RUNNERS)))
    def fail_infra(self, job_id: int, runner: str | None) -> None:
        job = self.model[job_id]
        allowed = job.state == JobState.running and runner in (None, job.runner)
        try:
            new_state = self.queue.fail_infra(job_id, "infra", runner_id=runner)
        except InvalidTransition:
            assert not allowed
        else:
            assert allowed
            self.requeue(job)
            assert new_state == job.state

    @rule(job_id=jobs)
    def cancel(self, job_id: int) -> None:
        job = self.model[job_id]
        try:
            new_state = self.queue.cancel(job_id)
        except InvalidTransition:
            assert job.state in TERMINAL
        else:
            assert job.state not in TERMINAL
            job.cancel_requested = True
            if job.state == JobState.queued:
                job.state = JobState.cancelled
            assert new_state == job.state

    @rule(priority=st.integers(0, 10), group=st.sampled_from(GROUPS[1:]))
    def enqueue_superseding(self, priority: int, group: str) -> None:
        """A webhook delivery's pipeline: it cancels the older unfinished jobs of its group (queued) or flags them
        (the jobs here are of no pipeline; the pipeline waits for planning, which this machine does not do)."""
        older = [
            j for j in self.model.values()
            if j.group == group and j.state not in TERMINAL and not (j.state == JobState.running and j.cancel_requested)
        ]
        self.deliveries += 1
        spec = JobSpec(repo="/srv/repo", ref="main", priority=priority, concurrency_group=group)
        [delivery] = self.queue.enqueue_deliveries([NewDelivery("github", f"d{self.deliveries}", (spec,), True)])
        assert len(delivery.pipeline_ids) == 1 and delivery.job_ids == ()
        assert delivery.cancelled == tuple(sorted(j.id for j in older if j.state == JobState.queued))
        assert delivery.stopping == tuple(sorted(j.id for j in older if j.state == JobState.running))
        for job in older:
            job.cancel_requested = True
            if job.state == JobState.queued:
                job.state = JobState.cancelled

    @rule(job_id=jobs, priority=st.integers(0, 10))
    def set_priority(self, job_id: int, priority: int) -> None:
        job = self.model[job_id]
        try:
            self.queue.set_priority(job_id, priority)
        except InvalidTransition:
            assert job.state != JobState.queued
        else:
            assert job.state == JobState.queued
            if priority != job.priority:  # a new priority: its FIFO place there
                job.priority, job.seq = priority, 0

    # -- invariants ---------------------------------------------------------------------------------

    @invariant()
    def database_matches_the_model(self) -> None:
        stored, cursor = self.queue.list_jobs(limit=1000)
        assert cursor is None
        assert {j.id for j in stored} == set(self.model)  # no job lost, none invented
        for job in stored:
            mine = self.model[job.id]
            assert (job.state, job.attempts, job.spec.priority, job.cancel_requested) == (
                mine.state, mine.attempts, mine.priority, mine.cancel_requested)
            if job.state == JobState.running:
                assert job.runner_id == mine.runner and job.lease_expires == mine.lease_expires

    @invariant()
    def limits_hold(self) -> None:
        running = self.queue.running_jobs()
        assert len(running) <= MAX_CONCURRENT
        groups = [j.spec.concurrency_group for j in running if j.spec.concurrency_group is not None]
        assert len(groups) == len(set(groups))  # at most one running job per group

    @invariant()
    def terminal_states_never_change(self) -> None:
        for job in self.queue.list_jobs(limit=1000)[0]:
            if job.id in self.final:
                assert job.state == self.final[job.id]
            elif job.state in TERMINAL:
                self.final[job.id] = job.state

    @invariant()
    def dispatch_listing_predicts_the_next_claim(self) -> None:
        queued = self.queue.list_jobs(order="dispatch", limit=1000)[0]
        expected = sorted((j for j in self.model.values() if j.state == JobState.queued),
                          key=lambda j: (-j.priority, j.seq, j.id))
        assert [j.id for j in queued] == [j.id for j in expected]


SETTINGS = settings(max_examples=150, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
QueueMachine.TestCase.settings = SETTINGS
TestQueueMachine = QueueMachine.TestCase


class PostgresQueueMachine(QueueMachine):
    """The same machine on the PostgreSQL backend: one database per test, emptied for every example."""

    url = ""

    def __init__(self) -> None:
        RuleBasedStateMachine.__init__(self)
        self.dir = tempfile.mkdtemp(prefix="forgeci-queue-")
        self.clock = Clock()
        self.queue = PostgresQueue(self.url, max_concurrent=MAX_CONCURRENT, max_retries=MAX_RETRIES, clock=self.clock,
                                   pool_size=2)
        with self.queue._transaction() as conn:
            tables = [row[0] for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'forgeci_schema'")]
            conn.raw.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
        self.model = {}
        self.final = {}
        self.deliveries = 0


def test_the_state_machine_on_postgresql(pg_url: str) -> None:
    PostgresQueueMachine.url = pg_url
    run_state_machine_as_test(PostgresQueueMachine, settings=SETTINGS)
