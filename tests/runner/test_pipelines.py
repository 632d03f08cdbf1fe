"""Pipelines of many jobs end to end on the fake engine: planning from the repository's file, the DAG running in
parallel, matrices, outputs, cancel, superseding deliveries, and a crash in the middle."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from config.settings import Settings
from runner.models import Job, JobSpec, JobState, PipelineState
from runner.runtime import Runtime, open_runtime
from tests.fake_engine import FakeEngine, Script

MakeRepo = Callable[..., tuple[Path, str]]

DIAMOND = '''
[jobs.a]
steps = [{ name = "a", run = "step-a" }]
[jobs.b]
needs = ["a"]
steps = [{ name = "b", run = "step-b" }]
[jobs.c]
needs = ["a"]
steps = [{ name = "c", run = "step-c" }]
[jobs.d]
needs = ["b", "c"]
steps = [{ name = "d", run = "step-d" }]
'''

MATRIX = '''
[jobs.test]
matrix = { python = ["3.11", "3.12"], db = ["sqlite", "postgres", "mysql"] }
matrix_exclude = [{ python = "3.11", db = "mysql" }]
matrix_include = [{ python = "3.13", db = "sqlite" }]
steps = [{ name = "pytest", run = "pytest --db ${{ matrix.db }}" }]
'''


def with_queue(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, queue=dataclasses.replace(settings.queue, **changes))


async def finished(rt: Runtime, pipeline_id: int, timeout: float = 30) -> list[Job]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = rt.queue.pipeline(pipeline_id)
        if record.state.is_terminal:
            return [rt.queue.get(job_id) for job_id in record.job_ids]
        await asyncio.sleep(0.02)
    raise AssertionError(f"pipeline {pipeline_id} still {rt.queue.pipeline(pipeline_id).state}")


def by_display(jobs: list[Job]) -> dict[str, Job]:
    return {job.display or "": job for job in jobs}


def overlap(engine: FakeEngine, one: int, other: int) -> bool:
    a, b = ([e for e in engine.execs if e.job_id == job_id][0] for job_id in (one, other))
    return a.started < (b.ended or 0) and b.started < (a.ended or 0)


async def test_a_diamond_runs_its_middle_in_parallel_and_its_last_job_after_both(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, sha = make_local_repo({".forgeci.toml": DIAMOND})
    # Long enough that c's checkout and claim fit in b's step on a loaded machine (PostgreSQL's round trips too).
    fake_engine.on("step-b", Script(delay=1.0))
    fake_engine.on("step-c", Script(delay=1.0))
    async with open_runtime(with_queue(fake_settings, max_concurrent=4), {}, engine=fake_engine) as rt:
        submitted = await rt.control.submit_pipeline(JobSpec(repo=str(repo), ref="main"))
        assert len(submitted.job_ids) == 4
        jobs = by_display(await finished(rt, submitted.pipeline_id))
        record = rt.queue.pipeline(submitted.pipeline_id)
    assert record.state is PipelineState.success and record.sha == sha
    assert all(job.spec.sha == sha and job.state is JobState.success for job in jobs.values())
    assert overlap(fake_engine, jobs["b"].id, jobs["c"].id)
    d = [e for e in fake_engine.execs if e.job_id == jobs["d"].id][0]
    assert all(d.started >= (e.ended or 0) for e in fake_engine.execs if e.job_id in (jobs["b"].id, jobs["c"].id))


async def test_a_failing_middle_job_skips_the_last_one(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": DIAMOND})
    fake_engine.on("step-b", Script(exit_code=1))
    async with open_runtime(fake_settings, {}, engine=fake_engine) as rt:
        submitted = await rt.control.submit_pipeline(JobSpec(repo=str(repo), ref="main"))
        jobs = by_display(await finished(rt, submitted.pipeline_id))
        assert rt.queue.pipeline(submitted.pipeline_id).state is PipelineState.failure
    assert jobs["b"].state is JobState.failure and jobs["c"].state is JobState.success
    assert jobs["d"].state is JobState.skipped and jobs["d"].error == "not run: b ended failure"
    assert "step-d" not in fake_engine.runs()


async def test_a_matrix_expands_and_runs_each_member_with_its_values(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": MATRIX})
    async with open_runtime(with_queue(fake_settings, max_concurrent=3), {}, engine=fake_engine) as rt:
        submitted = await rt.control.submit_pipeline(JobSpec(repo=str(repo), ref="main"))
        jobs = by_display(await finished(rt, submitted.pipeline_id))
    assert sorted(jobs) == sorted([
        "test (python=3.11, db=sqlite)", "test (python=3.11, db=postgres)", "test (python=3.12, db=sqlite)",
        "test (python=3.12, db=postgres)", "test (python=3.12, db=mysql)", "test (python=3.13, db=sqlite)"])
    runs = {(e.env["MATRIX_PYTHON"], e.env["MATRIX_DB"]): e.run for e in fake_engine.execs}
    assert runs[("3.12", "mysql")] == "pytest --db mysql" and len(runs) == 6


async def test_outputs_of_a_job_reach_the_job_that_needs_it(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    toml = ('[jobs.build]\nsteps = [{ run = "build" }]\n'
            '[jobs.publish]\nneeds = ["build"]\nsteps = [{ run = "publish" }]\n')
    repo, _ = make_local_repo({".forgeci.toml": toml})
    fake_engine.on("build", Script(output={"version": "1.2.3"}))
    async with open_runtime(fake_settings, {}, engine=fake_engine) as rt:
        submitted = await rt.control.submit_pipeline(JobSpec(repo=str(repo), ref="main"))
        jobs = by_display(await finished(rt, submitted.pipeline_id))
    assert jobs["publish"].state is JobState.success
    publish = [e for e in fake_engine.execs if e.run == "publish"][0]
    assert publish.env["NEEDS_BUILD_VERSION"] == "1.2.3"


async def test_cancelling_a_pipeline_stops_its_running_jobs_and_cancels_the_rest(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": DIAMOND})
    fake_engine.on("step-b", Script(hang=True))
    fake_engine.on("step-c", Script(hang=True))
    async with open_runtime(with_queue(fake_settings, max_concurrent=4), {}, engine=fake_engine) as rt:
        submitted = await rt.control.submit_pipeline(JobSpec(repo=str(repo), ref="main"))
        while len(fake_engine.execs) < 3:
            await asyncio.sleep(0.02)
        await rt.control.cancel_pipeline(submitted.pipeline_id)
        jobs = by_display(await finished(rt, submitted.pipeline_id))
        assert rt.queue.pipeline(submitted.pipeline_id).state is PipelineState.cancelled
    assert [jobs[n].state for n in "abcd"] == [JobState.success, JobState.cancelled, JobState.cancelled,
                                                JobState.cancelled]
    assert all(e.signals == ["TERM"] for e in fake_engine.execs if e.run in ("step-b", "step-c"))


async def test_a_pushed_delivery_is_planned_by_the_coordinator_and_supersedes_the_older_pipeline(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, sha = make_local_repo({".forgeci.toml": DIAMOND})
    fake_engine.on("step-a", Script(hang=True), Script())
    push = JobSpec(repo=str(repo), ref="refs/heads/main", sha=sha, event="push",
                   concurrency_group="acme/app:refs/heads/main")
    async with open_runtime(with_queue(fake_settings, max_concurrent=4), {}, engine=fake_engine) as rt:
        first = await rt.control.commit_delivery("github", "d1", [push], supersede=True)
        [old] = first.pipeline_ids
        while not fake_engine.execs:
            await asyncio.sleep(0.02)
        second = await rt.control.commit_delivery("github", "d2", [push], supersede=True)
        [new] = second.pipeline_ids
        assert second.superseded == (old,)
        assert rt.queue.pipeline(new).state is PipelineState.planning  # planned by the coordinator's loop
        await finished(rt, old)
        jobs = by_display(await finished(rt, new))
        assert rt.queue.pipeline(old).state is PipelineState.cancelled
        assert all(job.state is JobState.success for job in jobs.values())
        again = await rt.control.commit_delivery("github", "d2", [push], supersede=True)
        assert again.redelivery and again.pipeline_ids == (new,) and set(again.job_ids) == {j.id for j in jobs.values()}


async def test_a_coordinator_that_crashed_mid_pipeline_finishes_it_after_restart(
        fake_settings: Settings, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": DIAMOND})
    settings = with_queue(fake_settings, max_concurrent=4)
    crashed = FakeEngine()
    crashed.on("step-b", Script(hang=True))
    async with open_runtime(settings, {}, engine=crashed) as rt:
        submitted = await rt.control.submit_pipeline(JobSpec(repo=str(repo), ref="main"))
        while len(crashed.execs) < 3:
            await asyncio.sleep(0.02)
        # A crash: the pool and its jobs vanish without recording anything (as after kill -9).
        assert rt.pool is not None
        for task, _ in list(rt.pool._running.values()):
            task.cancel()
        rt.pool._running.clear()
        rt.pool = None
    engine = FakeEngine()
    async with open_runtime(settings, {}, engine=engine) as rt:
        jobs = by_display(await finished(rt, submitted.pipeline_id))
        assert rt.queue.pipeline(submitted.pipeline_id).state is PipelineState.success
    assert all(job.state is JobState.success for job in jobs.values())
    assert jobs["b"].attempts == 2 and "step-a" not in engine.runs()  # a was done; b and d ran after the restart


async def test_retry_failed_reruns_the_failed_job_and_what_it_skipped_in_the_same_pipeline(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, sha = make_local_repo({".forgeci.toml": DIAMOND})
    fake_engine.on("step-a", Script(output={"version": "7"}))
    fake_engine.on("step-b", Script(exit_code=1), Script())
    async with open_runtime(fake_settings, {}, engine=fake_engine) as rt:
        submitted = await rt.control.submit_pipeline(JobSpec(repo=str(repo), ref="main"))
        first = by_display(await finished(rt, submitted.pipeline_id))
        assert first["d"].state is JobState.skipped
        again = await rt.control.retry_pipeline(submitted.pipeline_id, failed_only=True)
        assert again.pipeline_id == submitted.pipeline_id
        assert sorted(again.job_ids) == sorted([first["b"].id, first["d"].id])
        jobs = by_display(await finished(rt, submitted.pipeline_id))
        assert rt.queue.pipeline(submitted.pipeline_id).state is PipelineState.success
        whole = await rt.control.retry_pipeline(submitted.pipeline_id)
        new = by_display(await finished(rt, whole.pipeline_id))
        assert whole.pipeline_id != submitted.pipeline_id and rt.queue.pipeline(whole.pipeline_id).sha == sha
    assert all(job.state is JobState.success for job in jobs.values())
    assert fake_engine.runs().count("step-a") == 2 and fake_engine.runs().count("step-c") == 2  # not by retry-failed
    assert fake_engine.runs().count("step-b") == 3 and fake_engine.runs().count("step-d") == 2
    retried_b = [e.env for e in fake_engine.execs if e.run == "step-b"][1]
    assert retried_b["NEEDS_A_VERSION"] == "7"  # the outputs of the job that succeeded before are reused
    assert all(job.state is JobState.success for job in new.values())
