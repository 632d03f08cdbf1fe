"""The runtime (what `forgeci serve` runs below HTTP) on the PostgreSQL queue, with the fake engine: work another
process commits wakes the workers through LISTEN/NOTIFY, and PostgreSQL stopped and started under a running job
loses nothing (the job's end waits for the database, the listener reconnects)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from config.settings import Settings
from runner.queue import postgres_queue
from runner.queue.postgres import PostgresDatabase
from runner.models import Job, JobSpec, JobState
from runner.queue.postgres_queue import PostgresQueue
from runner.runtime import Runtime, open_runtime
from tests.fake_engine import FakeEngine, Script
from tests.postgres import Cluster

MakeRepo = Callable[..., tuple[Path, str]]
POOL_WAIT = 2.0
LEASE = 600  # the claim loop's idle poll is a third of it: within these tests only a wake-up makes it look


def on_postgres(settings: Settings, url: str) -> Settings:
    queue = dataclasses.replace(settings.queue, url=url, lease_seconds=LEASE)
    return dataclasses.replace(settings, queue=queue)


def spec(repo: Path, run: str = "make") -> JobSpec:
    return JobSpec(repo=str(repo), ref="main", pipeline={"steps": [{"name": "build", "run": run}]})


def enqueue_elsewhere(url: str, job: JobSpec) -> int:
    """What another process (a coordinator, a CLI) does: its own pool, its own commit and NOTIFY."""
    with PostgresQueue(url, pool_size=1) as other:
        return other.enqueue(job)


def job_of(url: str, job_id: int) -> Job:
    with PostgresQueue(url, pool_size=1) as other:
        return other.get(job_id)


async def wait_job(url: str, job_id: int, done: Callable[[Job], bool], timeout: float = 20) -> Job:
    """Read through a connection of our own (in a thread): the runtime's loop must stay free."""
    deadline = time.monotonic() + timeout
    while True:
        job = await asyncio.to_thread(job_of, url, job_id)
        if done(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id}: {job}"
        await asyncio.sleep(0.1)


async def listening(rt: Runtime, timeout: float = 10) -> None:
    assert rt._listening is not None, "no LISTEN thread on a PostgreSQL queue"
    assert await asyncio.to_thread(rt._listening.connected.wait, timeout), "the listener did not connect"


async def test_work_another_process_enqueues_is_claimed_at_its_commit(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo, pg_url: str) -> None:
    repo, _ = make_local_repo({"README": "x\n"})
    fake_engine.on("make", Script(lines=["built"]))
    async with open_runtime(on_postgres(fake_settings, pg_url), {}, workers=True, engine=fake_engine) as rt:
        assert isinstance(rt.queue, PostgresQueue)
        await listening(rt)
        await asyncio.sleep(0.5)  # the claim loop's first round is over: from now on it sleeps for LEASE / 3
        started = time.monotonic()
        job_id = await asyncio.to_thread(enqueue_elsewhere, pg_url, spec(repo))
        job = await wait_job(pg_url, job_id, lambda j: j.state.is_terminal, timeout=15)
        assert job.state is JobState.success, job
        assert time.monotonic() - started < 15  # without the NOTIFY it waits LEASE / 3 = 200 s


async def test_postgresql_stopped_under_a_running_job_loses_nothing(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo,
        own_pg_cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    # The server's pool waits POOL_WAIT for a connection (30 s by default): an outage longer than that is where a
    # write fails and must be retried, so the pool here gives up after 2 s and the outage lasts longer.
    monkeypatch.setattr(postgres_queue, "PostgresDatabase", functools.partial(PostgresDatabase, timeout=POOL_WAIT))
    url = own_pg_cluster.new_database()
    repo, _ = make_local_repo({"README": "x\n"})
    fake_engine.on("make", Script(lines=["first", "second"], interval=1.5))  # ends while PostgreSQL is down
    fake_engine.on("after", Script(lines=["after the restart"]))
    async with open_runtime(on_postgres(fake_settings, url), {}, workers=True, engine=fake_engine) as rt:
        await listening(rt)
        job_id = await asyncio.to_thread(enqueue_elsewhere, url, spec(repo))
        await wait_job(url, job_id, lambda j: bool(j.steps) and j.steps[0].started_at is not None)
        reconnects = rt._listening.reconnects if rt._listening else 0
        with own_pg_cluster.stopped():
            deadline = time.monotonic() + 10
            while not step_ended(fake_engine, job_id):
                assert time.monotonic() < deadline, "the step did not end"
                await asyncio.sleep(0.1)
            await asyncio.sleep(POOL_WAIT * 2.5)  # its end fails and is retried: the database is away
        job = await wait_job(url, job_id, lambda j: j.state.is_terminal, timeout=60)
        assert job.state is JobState.success and job.attempts == 1, job  # once, not requeued
        assert [(s.name, str(s.state)) for s in job.steps] == [("build", "success")]
        await listening(rt, timeout=30)
        assert rt._listening is not None and rt._listening.reconnects > reconnects
        after = await asyncio.to_thread(enqueue_elsewhere, url, spec(repo, "after"))
        assert (await wait_job(url, after, lambda j: j.state.is_terminal, timeout=30)).state is JobState.success


def step_ended(engine: FakeEngine, job_id: int) -> bool:
    return any(e.job_id == job_id and e.ended is not None for e in engine.execs)
