"""A pushed webhook's pipeline of many jobs, for real: planned from the repository's file, run in rootless Podman,
the diamond's middle in parallel inside the branch's concurrency group, then cancelled or finished."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bot.keys import RUNTIME
from config.settings import Settings
from runner.models import Job, JobState, PipelineState
from tests.bot.api_helpers import podman_engine
from tests.bot.webhook_helpers import ENV, open_client, push_repo

pytestmark = [pytest.mark.slow, pytest.mark.podman]

Client = TestClient[web.Request, web.Application]
MakeRepo = Callable[..., tuple[Path, str]]


def diamond(middle: str = "sleep 2", last: str = "true", last_if: str = "success") -> str:
    return f'''
snapshot = "never"
[jobs.a]
steps = [{{ name = "a", run = "echo a" }}]
[jobs.b]
needs = ["a"]
steps = [{{ name = "b", run = "{middle}" }}]
[jobs.c]
needs = ["a"]
steps = [{{ name = "c", run = "sleep 2" }}]
[jobs.d]
needs = ["b", "c"]
if = "{last_if}"
steps = [{{ name = "d", run = "{last}" }}]
'''




async def jobs_when(client: Client, pipeline_id: int, done: Callable[[list[Job]], bool], timeout: float = 120
                    ) -> dict[str, Job]:
    queue = client.app[RUNTIME].queue
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [queue.get(job_id) for job_id in queue.pipeline(pipeline_id).job_ids]
        if jobs and done(jobs):
            return {job.display or "": job for job in jobs}
        await asyncio.sleep(0.1)
    raise AssertionError(f"pipeline {queue.pipeline(pipeline_id)}")


def finished(jobs: list[Job]) -> bool:
    return all(job.state.is_terminal for job in jobs)


def span(job: Job) -> tuple[float, float]:
    [step] = job.steps
    assert step.started_at is not None and step.finished_at is not None
    return step.started_at, step.finished_at


def wide(settings: Settings) -> Settings:
    return dataclasses.replace(settings, queue=dataclasses.replace(settings.queue, max_concurrent=3))


async def test_a_pushed_diamond_runs_its_middle_at_once_and_a_failure_skips_the_last_job(
        settings: Settings, make_repo: MakeRepo) -> None:
    repo, sha = make_repo({".forgeci.toml": diamond()})
    client = await open_client(wide(settings), ENV, workers=True, engine=podman_engine(settings))
    try:
        pipeline_id = await push_repo(client, repo, sha)
        jobs = await jobs_when(client, pipeline_id, finished)
        queue = client.app[RUNTIME].queue
        assert queue.pipeline(pipeline_id).state is PipelineState.success
        assert all(job.state is JobState.success and job.spec.sha == sha for job in jobs.values())
        (b0, b1), (c0, c1), (d0, _) = span(jobs["b"]), span(jobs["c"]), span(jobs["d"])
        assert b0 < c1 and c0 < b1, "b and c did not overlap"  # one pipeline's jobs share its group
        assert d0 >= max(b1, c1)

        repo2, sha2 = make_repo({".forgeci.toml": diamond(middle="exit 3")})
        failing = await push_repo(client, repo2, sha2)
        jobs = await jobs_when(client, failing, finished)
        assert jobs["b"].state is JobState.failure and jobs["d"].state is JobState.skipped
        assert queue.pipeline(failing).state is PipelineState.failure
    finally:
        await client.close()


async def test_an_always_job_runs_after_a_failure_and_a_cancel_stops_the_middle_and_cancels_the_rest(
        settings: Settings, make_repo: MakeRepo) -> None:
    repo, sha = make_repo({".forgeci.toml": diamond(middle="exit 1", last="echo cleanup", last_if="always")})
    client = await open_client(wide(settings), ENV, workers=True, engine=podman_engine(settings))
    try:
        pipeline_id = await push_repo(client, repo, sha)
        jobs = await jobs_when(client, pipeline_id, finished)
        assert jobs["b"].state is JobState.failure and jobs["d"].state is JobState.success

        repo2, sha2 = make_repo({".forgeci.toml": diamond(middle="sleep 60", last_if="always")})
        slow = await push_repo(client, repo2, sha2)
        await jobs_when(client, slow, lambda jobs: sum(j.state is JobState.running and bool(j.steps)
                                                       for j in jobs) == 2)
        control = client.app[RUNTIME].control
        started = time.monotonic()
        await control.cancel_pipeline(slow)
        jobs = await jobs_when(client, slow, finished, timeout=60)
        assert time.monotonic() - started < 40
        assert [jobs[n].state for n in "abcd"] == [JobState.success, JobState.cancelled, JobState.cancelled,
                                                    JobState.cancelled]
        assert client.app[RUNTIME].queue.pipeline(slow).state is PipelineState.cancelled
    finally:
        await client.close()
