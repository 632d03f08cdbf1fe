"""Job control on the fake engine: each operation's queue change, its event and the worker's wake-up or stop."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from config.settings import Settings
from runner.errors import InstanceLocked, InvalidTransition, JobNotFound
from runner.events import JobEvent
from runner.models import Job, JobSpec, JobState
from runner.runtime import Runtime, open_runtime
from runner.cluster import runner_prefix
from runner.worker import default_runner_id, embedded_prefix
from tests.fake_engine import FakeEngine, Script

MakeRepo = Callable[..., tuple[Path, str]]
PIPELINE = {"steps": [{"name": "build", "run": "make"}]}


def spec(**changes: object) -> JobSpec:
    values: dict[str, object] = {"repo": "https://git.example.test/acme/app.git", "ref": "main", "pipeline": PIPELINE}
    return JobSpec(**(values | changes))  # type: ignore[arg-type]


class Recorder:
    """Every event the bus carries, from subscription on."""

    def __init__(self, rt: Runtime) -> None:
        self.events: list[JobEvent] = []
        self._task = asyncio.ensure_future(self._run(rt))

    async def _run(self, rt: Runtime) -> None:
        async for event in rt.events.subscribe():
            self.events.append(event)

    async def started(self, rt: Runtime) -> Recorder:
        while rt.events.subscriber_count == 0:
            await asyncio.sleep(0)
        return self

    async def seen(self, job_id: int, state: str, timeout: float = 5) -> None:
        """Until the event of `state` reached us (a job's row changes a moment before its event goes out)."""
        deadline = time.monotonic() + timeout
        while state not in self.of(job_id, None):
            assert time.monotonic() < deadline, f"no {state} event for job {job_id}: {self.of(job_id, None)}"
            await asyncio.sleep(0.01)

    def of(self, job_id: int, kind: str | None = "state") -> list[str]:
        return [e.state for e in self.events if e.job_id == job_id and (kind is None or e.kind == kind)]

    def close(self) -> None:
        self._task.cancel()


async def wait_job(rt: Runtime, job_id: int, done: Callable[[Job], bool], timeout: float = 20) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = rt.queue.get(job_id)
        if done(job):
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id}: {rt.queue.get(job_id)}")


def terminal(job: Job) -> bool:
    return job.state.is_terminal


@pytest.fixture
async def rt(fake_settings: Settings, fake_engine: FakeEngine) -> AsyncIterator[Runtime]:
    async with open_runtime(fake_settings, {}, workers=True, engine=fake_engine) as runtime:
        yield runtime


@pytest.fixture
def repo(make_local_repo: MakeRepo) -> Path:
    return make_local_repo({"README": "x\n"})[0]


async def test_submit_publishes_queued_and_wakes_the_pool_at_once(rt: Runtime, fake_engine: FakeEngine,
                                                                  repo: Path) -> None:
    recorder = await Recorder(rt).started(rt)
    fake_engine.expect("make", Script(lines=["built"]))
    job_id = await rt.control.submit(spec(repo=str(repo)))
    job = await wait_job(rt, job_id, terminal, timeout=5)  # the claim loop's idle interval is 20 s: a wake-up
    assert job.state is JobState.success
    await recorder.seen(job_id, "success")
    assert recorder.of(job_id) == ["queued", "running", "success"]
    assert [e.state for e in recorder.events if e.job_id == job_id and e.kind == "step_done"] == ["running"]
    recorder.close()
    fake_engine.check()


async def test_cancel_of_a_queued_job_ends_it_and_of_a_running_one_stops_its_step(
        rt: Runtime, fake_engine: FakeEngine, repo: Path) -> None:
    recorder = await Recorder(rt).started(rt)
    fake_engine.on("make", Script(hang=True))
    running = await rt.control.submit(spec(repo=str(repo)))
    await wait_job(rt, running, lambda j: bool(j.steps) and j.steps[0].started_at is not None)
    assert await rt.control.cancel(running) is JobState.running  # flagged: its runner stops it
    assert (await wait_job(rt, running, terminal)).state is JobState.cancelled
    assert fake_engine.execs[0].signals == ["TERM"]
    await recorder.seen(running, "cancelled")
    assert recorder.of(running, None)[-2:] == ["running", "cancelled"]
    assert "cancel_requested" in [e.kind for e in recorder.events if e.job_id == running]

    rt.queue.max_concurrent = 1
    blocker = await rt.control.submit(spec(repo=str(repo)))
    await wait_job(rt, blocker, lambda j: j.state is JobState.running)
    queued = await rt.control.submit(spec(repo=str(repo)))
    assert await rt.control.cancel(queued) is JobState.cancelled
    await asyncio.sleep(0.05)  # the recorder's turn on the loop
    assert recorder.of(queued) == ["queued", "cancelled"]
    with pytest.raises(InvalidTransition):
        await rt.control.cancel(queued)
    with pytest.raises(JobNotFound):
        await rt.control.cancel(9999)
    await rt.control.cancel(blocker)
    recorder.close()


async def test_retry_and_priority_go_through_control(rt: Runtime, fake_engine: FakeEngine, repo: Path) -> None:
    recorder = await Recorder(rt).started(rt)
    fake_engine.on("make", Script(exit_code=2), Script(exit_code=0))
    first = await rt.control.submit(spec(repo=str(repo)))
    assert (await wait_job(rt, first, terminal)).state is JobState.failure
    again = await rt.control.retry(first)
    job = await wait_job(rt, again, terminal)
    assert job.state is JobState.success and job.spec.meta["retry_of"] == str(first)
    assert recorder.of(again)[0] == "queued"
    assert [e.data for e in recorder.events if e.job_id == again][0] == {"retry_of": first}
    with pytest.raises(InvalidTransition):
        await rt.control.set_priority(again, 9)  # finished: only a queued job has a place in the queue


async def test_infrastructure_faults_are_retried_then_end_error(fake_settings: Settings, repo: Path) -> None:
    engine = FakeEngine(images=())  # the default image is missing: an infrastructure fault every time
    settings = dataclasses.replace(fake_settings, queue=dataclasses.replace(fake_settings.queue, max_retries=2))
    async with open_runtime(settings, {}, engine=engine) as rt:
        recorder = await Recorder(rt).started(rt)
        job_id = await rt.control.submit(spec(repo=str(repo)))
        job = await wait_job(rt, job_id, terminal)
        await recorder.seen(job_id, "error")
        recorder.close()
    assert job.state is JobState.error and job.attempts == 3
    assert recorder.of(job_id) == ["queued", "running", "queued", "running", "queued", "running", "error"]


async def test_the_coordinator_requeues_its_hosts_orphans_at_once_and_leaves_other_runners_jobs(
        fake_settings: Settings, fake_engine: FakeEngine, repo: Path) -> None:
    fake_settings = dataclasses.replace(fake_settings, queue=dataclasses.replace(fake_settings.queue,
                                                                                 max_concurrent=3))
    async with open_runtime(fake_settings, {}, workers=False, engine=fake_engine) as rt:
        # A crash: jobs claimed by an embedded runner of this host (an older id, and one of another process),
        # and one claimed by a remote agent, which keeps it under its lease.
        # On PostgreSQL the prefix names the data dir too: another coordinator on this host keeps its jobs.
        prefix = runner_prefix(rt.queue, rt.layout.root)
        ids = [rt.queue.enqueue(spec(repo=str(repo))) for _ in range(3)]
        for runner_id in (prefix, f"{prefix}/1.2", "agent-elsewhere"):
            assert rt.queue.claim(runner_id, 600) is not None
    fake_engine.on("make", Script(lines=["again"]))
    started = time.monotonic()
    async with open_runtime(fake_settings, {}, engine=fake_engine) as rt:
        jobs = [await wait_job(rt, job_id, terminal) for job_id in ids[:2]]
        assert all(j.state is JobState.success and j.attempts == 2 for j in jobs)
        assert time.monotonic() - started < 10  # not after the 600 s lease
        agent_job = rt.queue.get(ids[2])
        assert agent_job.state is JobState.running and agent_job.runner_id == "agent-elsewhere"


async def test_runner_ids_are_unique_per_process_under_the_hosts_prefix() -> None:
    mine = default_runner_id()
    assert mine.startswith(embedded_prefix() + "/") and mine != embedded_prefix()
    pid, started = mine.rsplit("/", 1)[1].split(".")
    assert int(pid) > 0 and int(started) > 0


async def test_only_one_coordinator_holds_a_data_dir(fake_settings: Settings) -> None:
    async with open_runtime(fake_settings, {}, engine=FakeEngine()):
        with pytest.raises(InstanceLocked, match=r"another forgeci serve \(pid \d+\) is already running"):
            async with open_runtime(fake_settings, {}, engine=FakeEngine()):
                pass
        # A runtime that runs no workers (forgeci run, debug, maintenance) opens the same data dir freely.
        async with open_runtime(fake_settings, {}, workers=False, engine=FakeEngine()) as reader:
            assert reader.queue.active_counts() == (0, 0)
    async with open_runtime(fake_settings, {}, engine=FakeEngine()):  # released with the first
        pass


async def test_a_stopping_server_gives_running_jobs_runner_shutdown_grace_then_requeues_them(
        fake_settings: Settings, repo: Path) -> None:
    settings = dataclasses.replace(fake_settings, runner=dataclasses.replace(fake_settings.runner,
                                                                             shutdown_grace=0.3))
    engine = FakeEngine()
    engine.on("make", Script(hang=True))
    async with open_runtime(settings, {}, engine=engine) as rt:
        job_id = await rt.control.submit(spec(repo=str(repo)))
        await wait_job(rt, job_id, lambda j: bool(j.steps))
        started = time.monotonic()
        await rt.stop_workers()
        took = time.monotonic() - started
        job = rt.queue.get(job_id)
    assert 0.3 <= took < 5  # the grace, then TERM (the fake step ends at once)
    assert job.state is JobState.queued and "the runner stopped before the job finished" in (job.error or "")
    assert engine.execs[0].signals == ["TERM"]
