"""Two coordinators (runtimes with embedded workers on the fake engine, each its own data dir) on one PostgreSQL
queue: 1,000 jobs each end in exactly one terminal state; with one coordinator killed -9 halfway (real processes)
the rest finish through the other, none lost, none run again after it succeeded; and the schedules fire once per due
time while the coordinator holding them dies.

What a job went through is read from the database: `status_changes` (a trigger writes a row per state change, in
commit order) and `usage` (a row per attempt, with its runner)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from config.schedules import ScheduleSpec
from config.settings import Settings
from runner.control import JobControl
from runner.events import EventBus
from runner.models import JobSpec
from runner.queue.leader import Singletons
from runner.queue.postgres import conninfo
from runner.queue.postgres_queue import PostgresQueue
from runner.runtime import open_runtime
from runner.scheduler import Scheduler
from tests.fake_engine import FakeEngine, Script
from tests.runner.test_cluster_leader import holder_pid

ROOT = Path(__file__).resolve().parents[2]
JOBS = int(os.environ.get("FORGECI_CLUSTER_JOBS", "1000"))
TERMINAL = ("success", "failure", "error", "timeout", "cancelled", "skipped")
LEASE = 3
PIPELINE = {"steps": [{"name": "build", "run": "make"}]}
MakeRepo = Callable[..., tuple[Path, str]]


def cluster_queue(url: str, **options: Any) -> PostgresQueue:
    return PostgresQueue(url, **{"max_concurrent": 8, **options})


def coordinator_settings(settings: Settings, data_dir: Path, url: str) -> Settings:
    """One coordinator: its own data dir, the shared PostgreSQL queue. `queue.max_concurrent` is the cluster's cap
    (the claim counts every running job of the database, the agents' too, as the README says)."""
    return dataclasses.replace(settings, data_dir=data_dir, queue=dataclasses.replace(
        settings.queue, url=url, lease_seconds=LEASE, max_concurrent=8))


def enqueue_all(url: str, repo: Path, count: int) -> list[int]:
    with PostgresQueue(url) as queue:
        return [queue.enqueue(JobSpec(repo=str(repo), ref="main", pipeline=PIPELINE)) for _ in range(count)]


def history(url: str) -> tuple[dict[int, list[str]], dict[int, list[tuple[float, float, str, str]]]]:
    """{job: its states in commit order}, {job: its attempts (started, ended, state, runner)}."""
    with psycopg.connect(url) as conn:
        states: dict[int, list[str]] = {}
        for job_id, state in conn.execute("SELECT job_id, state FROM status_changes WHERE job_id IS NOT NULL "
                                          "ORDER BY id"):
            states.setdefault(job_id, []).append(state)
        attempts: dict[int, list[tuple[float, float, str, str]]] = {}
        for job_id, started, ended, state, runner_id in conn.execute(
                "SELECT job_id, started_at, ended_at, state, runner FROM usage ORDER BY ended_at, job_id, attempt, seq"):
            attempts.setdefault(job_id, []).append((started, ended, state, runner_id or ""))
    return states, attempts


def check_each_ended_once(url: str, job_ids: list[int]) -> dict[int, list[tuple[float, float, str, str]]]:
    """Every job ended `success`, with exactly one terminal change, and no attempt began after its success."""
    states, attempts = history(url)
    for job_id in job_ids:
        ends = [s for s in states.get(job_id, []) if s in TERMINAL]
        assert ends == ["success"], (job_id, states.get(job_id))
        runs = attempts[job_id]
        done = [ended for _, ended, state, _ in runs if state == "success"]
        assert len(done) == 1, (job_id, runs)
        assert all(started <= done[0] for started, _, _, _ in runs), (job_id, runs)  # nothing ran after it
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall() == [("success", len(job_ids))]
    return attempts


@pytest.mark.slow
async def test_two_coordinators_run_1000_jobs_each_to_exactly_one_end(
        pg_url: str, fake_settings: Settings, tmp_path: Path, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({"README": "x\n"})
    engines = [FakeEngine(), FakeEngine()]
    for engine in engines:
        engine.default = Script(lines=["working"])
    async with open_runtime(coordinator_settings(fake_settings, tmp_path / "a", pg_url), {}, engine=engines[0]) as a, \
            open_runtime(coordinator_settings(fake_settings, tmp_path / "b", pg_url), {}, engine=engines[1]) as b:
        job_ids = await asyncio.to_thread(enqueue_all, pg_url, repo, JOBS)
        a.pool.wake()
        b.pool.wake()
        deadline = time.monotonic() + 900
        while await asyncio.to_thread(a.queue.active_counts) != (0, 0):
            assert time.monotonic() < deadline, await asyncio.to_thread(a.queue.active_counts)
            await asyncio.sleep(0.5)
        prefixes = (a.pool.orphan_prefix, b.pool.orphan_prefix)
    attempts = check_each_ended_once(pg_url, job_ids)
    by = Counter(next(p for p in prefixes if runs[0][3].startswith(p)) for runs in attempts.values())
    print(f"jobs per coordinator: {dict(by)}")
    assert set(by) == set(prefixes)  # both took part


def start_coordinator(url: str, data_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.cluster_node", "coordinator", url, str(data_dir), str(LEASE)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "STEP_DELAY": "0.05"})


def ready(proc: subprocess.Popen[str], timeout: float = 60) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("READY"):
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"coordinator exited {proc.returncode}")
    raise AssertionError("coordinator not ready")


def terminal_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM jobs WHERE state IN ('success', 'failure', 'error')").fetchone()[0]


@pytest.mark.slow
def test_kill_9_of_one_coordinator_halfway_the_other_finishes_every_job_once(
        pg_url: str, tmp_path: Path, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({"README": "x\n"})
    job_ids = enqueue_all(pg_url, repo, JOBS)
    procs = [start_coordinator(pg_url, tmp_path / name) for name in ("a", "b")]
    try:
        for proc in procs:
            ready(proc)
        deadline = time.monotonic() + 600
        while terminal_count(pg_url) < JOBS // 2:
            assert time.monotonic() < deadline, terminal_count(pg_url)
            time.sleep(0.2)
        with psycopg.connect(pg_url) as conn:
            running_before = {row[0] for row in conn.execute("SELECT id FROM jobs WHERE state = 'running'")}
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait(10)
        killed_at = time.time()
        while terminal_count(pg_url) < JOBS:
            assert time.monotonic() < deadline, terminal_count(pg_url)
            time.sleep(0.5)
        assert procs[1].poll() is None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
    attempts = check_each_ended_once(pg_url, job_ids)
    retried = [job_id for job_id, runs in attempts.items() if len(runs) > 1]
    after = sum(1 for runs in attempts.values() if runs[-1][1] > killed_at)
    print(f"{len(running_before)} job(s) running at the kill, {len(retried)} run again after it, {after} finished "
          f"after it")
    assert retried and set(retried) <= running_before  # only what the dead coordinator held ran again


@pytest.mark.slow
async def test_schedules_fire_once_per_due_time_while_the_coordinator_holding_them_dies(
        pg_url: str, fake_settings: Settings) -> None:
    start = 1_800_000_030.0  # half a minute past a full minute: due at every full minute after it
    now = [start]
    nightly = ScheduleSpec(name="nightly", repo="https://git.example.test/acme/app.git", ref="main", cron="* * * * *")
    settings = dataclasses.replace(fake_settings, schedules=(nightly,))
    queues = [PostgresQueue(pg_url, clock=lambda: now[0]) for _ in range(2)]
    nodes = [Singletons(conninfo(pg_url), lease=1.5) for _ in range(2)]
    for queue, singletons in zip(queues, nodes, strict=True):
        scheduler = Scheduler(queue, JobControl(queue, EventBus()), settings, clock=lambda: now[0],
                              sleep=lambda _: asyncio.sleep(0.02))
        singletons.start("schedules", scheduler.run)
    try:
        deadline = time.monotonic() + 20
        while not queues[0].schedules():  # the holder synced the settings' schedules (due at start + 30)
            assert time.monotonic() < deadline, "no coordinator synced the schedules"
            await asyncio.sleep(0.02)
        for minute in range(1, 13):
            now[0] = start + 60 * minute - 29  # one due time passed
            if minute == 6:  # the holder's session dies (as with kill -9); the other takes the schedules
                pid = holder_pid(pg_url, "schedules")
                with psycopg.connect(pg_url, autocommit=True) as conn:
                    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                deadline = time.monotonic() + 20
                while sum(s.leaderships["schedules"].terms for s in nodes) < 2:  # a new term runs it
                    assert time.monotonic() < deadline, "nobody took the schedules over"
                    await asyncio.sleep(0.02)
            deadline = time.monotonic() + 20
            while len(queues[0].list_pipelines()[0]) < minute:
                assert time.monotonic() < deadline, f"due time {minute} not fired"
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
        records, _ = queues[0].list_pipelines()
        assert len(records) == 12  # once per due time, none twice, none missed over the take-over
        assert sorted(r.spec.meta["schedule"] for r in records) == ["nightly"] * 12
        assert sum(s.leaderships["schedules"].terms for s in nodes) == 2  # it moved once
    finally:
        for singletons in nodes:
            await singletons.stop()
        for queue in queues:
            queue.close()


def test_two_coordinators_planning_one_pipeline_at_once_write_its_jobs_once(pg_url: str) -> None:
    """Every coordinator runs a planner over the shared `planning` pipelines: the second plan of a pipeline must be
    refused, not add its jobs again (on SQLite BEGIN IMMEDIATE serializes them; on PostgreSQL the row lock)."""
    from runner.errors import InvalidTransition
    from runner.queue import PlannedJobRow

    spec = JobSpec(repo="https://git.example.test/acme/app.git", ref="main", pipeline=PIPELINE)
    queues = [PostgresQueue(pg_url), PostgresQueue(pg_url)]
    try:
        for _ in range(20):
            pipeline_id = queues[0].create_pipeline(spec)
            barrier = threading.Barrier(2)
            outcomes: list[str] = []

            def plan(queue: PostgresQueue) -> None:
                rows = [PlannedJobRow(spec, "build", "build"), PlannedJobRow(spec, "test", "test")]
                barrier.wait()
                try:
                    queue.write_plan(pipeline_id, "b" * 40, rows)
                    outcomes.append("planned")
                except InvalidTransition:
                    outcomes.append("refused")

            threads = [threading.Thread(target=plan, args=(queue,)) for queue in queues]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert sorted(outcomes) == ["planned", "refused"]
            assert len(queues[0].pipeline(pipeline_id).job_ids) == 2
    finally:
        for queue in queues:
            queue.close()


def test_two_jobs_of_a_pipeline_ending_at_once_on_two_coordinators_settle_it(pg_url: str) -> None:
    """Jobs a and b end at the same instant on two coordinators; c needs both: it must become claimable and the
    pipeline must go on (each settlement read the other's job still running, before the pipeline's row lock)."""
    from runner.queue import PlannedJobRow

    spec = JobSpec(repo="https://git.example.test/acme/app.git", ref="main", pipeline=PIPELINE)
    queues = [cluster_queue(pg_url), cluster_queue(pg_url)]
    try:
        for _ in range(20):
            pipeline_id = queues[0].create_pipeline(spec)
            queues[0].write_plan(pipeline_id, "b" * 40, [
                PlannedJobRow(spec, "a", "a"), PlannedJobRow(spec, "b", "b"),
                PlannedJobRow(spec, "c", "c", needs=("a", "b"))])
            claimed = [queues[0].claim("node-a", 60), queues[1].claim("node-b", 60)]
            barrier = threading.Barrier(2)

            def end(queue: PostgresQueue, job_id: int, runner_id: str) -> None:
                barrier.wait()
                queue.complete(job_id, "success", runner_id=runner_id)

            threads = [threading.Thread(target=end, args=(queue, job.id, runner_id)) for queue, job, runner_id
                       in zip(queues, claimed, ("node-a", "node-b"), strict=True) if job is not None]
            assert len(threads) == 2
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            last = queues[0].claim("node-a", 60)
            assert last is not None and last.name == "c"
            queues[0].complete(last.id, "success", runner_id="node-a")
            assert queues[0].pipeline(pipeline_id).state.value == "success"
    finally:
        for queue in queues:
            queue.close()
