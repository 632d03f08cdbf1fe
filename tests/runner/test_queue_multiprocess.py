"""Four processes claim and complete jobs from one database at once; nothing is lost or run twice. On both
backends: one SQLite file, or one PostgreSQL database (as several coordinators would share it)."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

from runner.models import Job, JobSpec, JobState
from runner.queue import Queue
from runner.queue.postgres_queue import PostgresQueue

PROCESSES = 4
Claim = tuple[int, int, float, float]  # job id, attempts, claimed at, completed at


def open_queue(target: str | Path, **options: Any) -> Queue:
    if str(target).startswith("postgresql://"):
        return PostgresQueue(str(target), pool_size=2, **options)
    return Queue(target, **options)


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where the queue is: a SQLite file, or a fresh database of the throwaway cluster (tests/postgres.py)."""
    return request.getfixturevalue("pg_url") if request.param == "postgres" else tmp_path / "queue.db"


def _claim_until_empty(path: str, runner: str, max_concurrent: int, hold: float, start: Any, results: Any) -> None:
    """A runner process: claim, hold the job a moment, complete it; report every claim and what it saw."""
    claims: list[Claim] = []
    most_running_seen = 0
    with open_queue(path, max_concurrent=max_concurrent) as queue:
        start.wait()
        while True:
            job = queue.claim(runner, 60)
            if job is None:
                if queue.active_counts()[0] == 0:
                    break
                time.sleep(0.001)  # every slot is taken: wait for another runner to complete
                continue
            claimed_at = time.monotonic()  # CLOCK_MONOTONIC is system-wide, so comparable across processes
            most_running_seen = max(most_running_seen, len(queue.running_jobs()))
            if hold:
                time.sleep(hold)
            completed_at = time.monotonic()
            queue.complete(job.id, JobState.success, runner_id=runner)
            claims.append((job.id, job.attempts, claimed_at, completed_at))
    results.put((runner, claims, most_running_seen))


def _run_runners(path: str | Path, max_concurrent: int, hold: float) -> dict[str, tuple[list[Claim], int]]:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(PROCESSES)  # released together once all have opened the queue, so claims really race
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_claim_until_empty, args=(str(path), f"runner-{n}", max_concurrent, hold, start, results))
        for n in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    reports = {}
    for _ in workers:
        runner, claims, most_running_seen = results.get(timeout=120)
        reports[runner] = (claims, most_running_seen)
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    return reports


def all_jobs(queue: Queue) -> list[Job]:
    """Every job, newest first, page by page as the API lists them."""
    jobs, cursor = queue.list_jobs(limit=1000)
    while cursor is not None:
        page, cursor = queue.list_jobs(limit=1000, cursor=cursor)
        jobs += page
    return jobs


def test_every_job_is_claimed_exactly_once_across_processes(target: str | Path) -> None:
    path = target
    with open_queue(path) as queue:
        ids = [queue.enqueue(JobSpec(repo="/srv/repo", ref="main", priority=n % 11)) for n in range(2000)]
    reports = _run_runners(path, max_concurrent=1000, hold=0)
    claimed = [(job_id, attempts) for claims, _ in reports.values() for job_id, attempts, *_ in claims]
    assert sorted(job_id for job_id, _ in claimed) == ids  # none lost, none twice
    assert {attempts for _, attempts in claimed} == {1}
    assert all(claims for claims, _ in reports.values())  # every process took part
    with open_queue(path) as queue:
        stored = all_jobs(queue)
    assert [job.id for job in reversed(stored)] == ids and {job.state for job in stored} == {JobState.success}
    holders = {job.id: job.runner_id for job in stored}
    by_runner = {job_id: runner for runner, (claims, _) in reports.items() for job_id, *_ in claims}
    assert all(by_runner[job_id] == runner for job_id, runner in holders.items())


def test_max_concurrent_holds_across_processes(target: str | Path) -> None:
    path = target
    with open_queue(path) as queue:
        ids = [queue.enqueue(JobSpec(repo="/srv/repo", ref="main")) for _ in range(40)]
    reports = _run_runners(path, max_concurrent=2, hold=0.02)
    claims = [claim for claims, _ in reports.values() for claim in claims]
    assert sorted(job_id for job_id, *_ in claims) == ids
    assert max(seen for _, seen in reports.values()) <= 2
    # Each recorded interval lies inside the job's real running time, so their overlap is a lower bound
    # on how many jobs ran at once: it must never exceed the limit, and should reach it.
    events = sorted([(t0, 1) for _, _, t0, _ in claims] + [(t1, -1) for _, _, _, t1 in claims])
    overlap = most = 0
    for _, delta in events:
        overlap += delta
        most = max(most, overlap)
    assert most == 2
