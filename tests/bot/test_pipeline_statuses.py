"""Commit statuses of pipelines pushed by a webhook and run by the workers on the fake engine: one per job and
the pipeline's own for a pipeline of several, exactly the old single status for a pipeline of one."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bot.keys import RUNTIME, STATUS
from bot.status.base import CommitStatus
from bot.status.reporter import _Channel, _Update
from config.settings import Settings
from runner.models import JobSpec, JobState, PipelineState
from tests.bot.webhook_helpers import (
    ENV, PUBLIC_URL, FakeForge, Recorded, fake_forge, fixture_json, github_headers, open_client, planned_jobs,
)
from tests.fake_engine import FakeEngine, Script

__all__ = ["fake_forge"]  # a fixture

Client = TestClient[web.Request, web.Application]
MakeRepo = Callable[..., tuple[Path, str]]
TOKENS = {"FORGECI_GITHUB_TOKEN": "ghp-test-token"}
CONTEXT = "forgeci/ci"
DIAMOND = "".join(f'[jobs.{name}]\nneeds = {needs}\nsteps = [{{ name = "{name}", run = "step-{name}" }}]\n'
                  for name, needs in (("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])))
MATRIX = '''
[jobs.lint]
steps = [{ name = "ruff", run = "lint" }]
[jobs.test]
needs = ["lint"]
matrix = { python = ["3.11", "3.12"] }
fail_fast = false
steps = [{ name = "pytest", run = "pytest ${{ matrix.python }}" }]
[jobs.build]
needs = ["test"]
steps = [{ name = "build", run = "build" }]
'''


def forge_settings(settings: Settings, forge: FakeForge, **queue: Any) -> Settings:
    return dataclasses.replace(
        settings, github=dataclasses.replace(settings.github, api_url=forge.url),
        server=dataclasses.replace(settings.server, public_url=PUBLIC_URL),
        queue=dataclasses.replace(settings.queue, **{"max_concurrent": 4, **queue}))


@pytest.fixture
async def start(settings: Settings, fake_forge: FakeForge,
                fake_engine: FakeEngine) -> AsyncIterator[Callable[..., Any]]:
    clients: list[Client] = []

    async def started(**queue: Any) -> Client:
        client = await open_client(forge_settings(settings, fake_forge, **queue), {**ENV, **TOKENS}, workers=True,
                                   engine=fake_engine)
        client.app[STATUS].retry_base = 0.05
        clients.append(client)
        return client

    yield started
    for client in clients:
        await client.close()


async def push(client: Client, repo: Path, sha: str) -> int:
    """The real push fixture pointed at a local repository; the pipeline it made."""
    payload = fixture_json("push.with-new-branch.json")
    payload["repository"]["clone_url"] = str(repo)
    payload.update(ref="refs/heads/main", after=sha)
    body = json.dumps(payload).encode()
    response = await client.post("/webhooks/github", data=body, headers=github_headers("push", body))
    assert response.status == 202, await response.text()
    answer = await response.json()
    assert answer["jobs"] == []  # planned by the coordinator, after the answer
    return int(answer["pipelines"][0])


async def finished(client: Client, forge: FakeForge, pipeline_id: int, timeout: float = 30) -> dict[str, list[Any]]:
    """Wait for the pipeline's end and its final status on the shared context; every context's posts, in order."""
    queue = client.app[RUNTIME].queue
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await client.app[STATUS].idle()
        posts = by_context(forge.statuses())
        if queue.pipeline(pipeline_id).state.is_terminal and posts.get(CONTEXT, [{}])[-1].get("state") != "pending":
            await asyncio.sleep(0.1)  # the jobs' last events may still be on their way
            await client.app[STATUS].idle()
            return by_context(forge.statuses())
        await asyncio.sleep(0.05)
    raise AssertionError(f"pipeline {queue.pipeline(pipeline_id).state}; posts {by_context(forge.statuses())}")


def by_context(posts: list[Recorded]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for post in posts:
        found.setdefault(post.body["context"], []).append(post.body)
    return found


def in_order(posts: list[dict[str, Any]]) -> bool:
    """Pending updates, then one final state: never a pending one after the end."""
    states = [p["state"] for p in posts]
    return states[-1] != "pending" and all(s == "pending" for s in states[:-1])


async def test_a_pushed_diamond_posts_a_status_per_job_and_the_pipeline_s_own(
        start: Callable[..., Any], fake_forge: FakeForge, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, sha = make_local_repo({".forgeci.toml": DIAMOND})
    fake_engine.on("step-b", Script(delay=0.2))
    client = await start()
    pipeline_id = await push(client, repo, sha)
    jobs = await planned_jobs(client, pipeline_id)
    posts = await finished(client, fake_forge, pipeline_id)
    assert set(posts) == {CONTEXT, *(f"{CONTEXT}/{name}" for name in "abcd")}
    for name, job_id in zip("abcd", jobs):
        mine = posts[f"{CONTEXT}/{name}"]
        assert in_order(mine) and mine[0]["description"] == "Queued", mine
        assert mine[-1]["state"] == "success" and mine[-1]["description"].startswith("Passed in ")
        assert {p["target_url"] for p in mine} == {f"{PUBLIC_URL}/dashboard/jobs/{job_id}"}
    own = posts[CONTEXT]
    assert in_order(own), own
    assert own[-1]["state"] == "success" and own[-1]["description"].startswith("Passed: 4 jobs in ")
    assert [p["description"] for p in own[:-1]] == sorted(
        (p["description"] for p in own[:-1]), key=lambda d: (not d.startswith("Queued"), d))  # counts only grow
    assert all(p["description"].startswith(("Queued: 4 jobs", "Running: ")) for p in own[:-1])
    assert {p.path for p in fake_forge.statuses()} == {f"/repos/Codertocat/Hello-World/statuses/{sha}"}


async def test_a_one_job_pipeline_posts_the_single_status_it_always_did(
        start: Callable[..., Any], fake_forge: FakeForge, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, sha = make_local_repo({".forgeci.toml": '[[steps]]\nname = "test"\nrun = "test"\n'})
    fake_engine.on("test", Script(delay=0.3))  # long enough for its step to be reported
    client = await start()
    pipeline_id = await push(client, repo, sha)
    [job_id] = await planned_jobs(client, pipeline_id)
    posts = await finished(client, fake_forge, pipeline_id)
    assert list(posts) == [CONTEXT]  # no per-job context, no "N jobs"
    descriptions = [p["description"] for p in posts[CONTEXT]]
    expected = ["Queued", "Running", "Running step 1/1: test"]
    assert descriptions[:-1] == [d for d in expected if d in descriptions]  # in order; a busy loop may coalesce
    assert "Running step 1/1: test" in descriptions and descriptions[-1].startswith("Passed in ")
    assert {p["target_url"] for p in posts[CONTEXT]} == {f"{PUBLIC_URL}/dashboard/jobs/{job_id}"}


async def test_a_failing_matrix_member_fails_its_own_context_and_the_pipeline_s(
        start: Callable[..., Any], fake_forge: FakeForge, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, sha = make_local_repo({".forgeci.toml": MATRIX})
    fake_engine.on("pytest 3.12", Script(exit_code=3))
    client = await start()
    pipeline_id = await push(client, repo, sha)
    await planned_jobs(client, pipeline_id)
    posts = await finished(client, fake_forge, pipeline_id)
    assert client.app[RUNTIME].queue.pipeline(pipeline_id).state is PipelineState.failure
    final = {context: mine[-1] for context, mine in posts.items()}
    assert all(in_order(mine) for mine in posts.values()), posts
    failed = final[f"{CONTEXT}/test (python=3.12)"]
    assert failed["state"] == "failure" and failed["description"].startswith("Failed at step 1: pytest (exit 3)")
    assert final[f"{CONTEXT}/test (python=3.11)"]["state"] == "success"
    assert final[f"{CONTEXT}/lint"]["state"] == "success"
    skipped = final[f"{CONTEXT}/build"]
    assert (skipped["state"], skipped["description"]) == ("success", "Skipped: not run: test (python=3.12) ended "
                                                                     "failure")
    own = final[CONTEXT]
    assert (own["state"], own["description"]) == ("failure", "Failed: test (python=3.12) failed")
    assert own["target_url"] == f"{PUBLIC_URL}/dashboard/pipelines/{pipeline_id}"  # its page: the graph of its jobs


def test_a_context_s_updates_are_ordered_by_pipeline_then_event_whichever_job_they_come_from() -> None:
    channel = _Channel()
    spec = JobSpec(repo="r", ref="main", sha="a" * 40)

    def update(pipeline: int | None, seq: int, job_id: int) -> _Update:
        status = CommitStatus(job_id, JobState.running, "pending", f"{pipeline}/{seq}", "u", CONTEXT, pipeline)
        return _Update(pipeline, seq, spec, status)

    assert channel.offer(update(5, 10, job_id=9))
    assert channel.offer(update(5, 11, job_id=8))  # a lower job's later event: kept (ordering by job id lost it)
    assert not channel.offer(update(5, 9, job_id=9))  # an older event of the same pipeline
    assert not channel.offer(update(4, 12, job_id=20))  # a later event of an older pipeline (superseded)
    assert channel.offer(update(None, 13, job_id=30))  # a job of no pipeline (a retry): the newest pipeline's
    assert channel.offer(update(6, 1, job_id=1))  # a newer pipeline, whatever its sequence
    assert channel.take() == update(6, 1, job_id=1) and channel.take() is None  # coalesced to the newest


async def test_the_pipeline_s_final_status_comes_when_a_lower_job_ends_last_on_a_slow_forge(
        start: Callable[..., Any], fake_forge: FakeForge, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    """The shared context hears the end of the pipeline from the job with the lower id, which ends last, while
    the forge is slow and the context's updates queue up."""
    toml = '[jobs.slow]\nsteps = [{ run = "slow" }]\n[jobs.quick]\nsteps = [{ run = "quick" }]\n'
    repo, sha = make_local_repo({".forgeci.toml": toml})
    fake_engine.on("slow", Script(delay=0.6))
    fake_forge.status_delay = 0.2
    client = await start()
    pipeline_id = await push(client, repo, sha)
    slow, quick = await planned_jobs(client, pipeline_id)
    posts = await finished(client, fake_forge, pipeline_id)
    queue = client.app[RUNTIME].queue
    assert (queue.get(quick).finished_at or 0) < (queue.get(slow).finished_at or 0)  # the lower id ended last
    own = posts[CONTEXT]
    assert in_order(own) and own[-1]["description"].startswith("Passed: 2 jobs in "), own


async def test_planning_that_cannot_fetch_says_so_and_ends_in_error(
        start: Callable[..., Any], fake_forge: FakeForge, tmp_path: Path) -> None:
    client = await start(max_retries=1)
    pipeline_id = await push(client, tmp_path / "gone", "a" * 40)
    posts = await finished(client, fake_forge, pipeline_id, timeout=30)
    assert list(posts) == [CONTEXT]
    [again, error] = posts[CONTEXT]
    assert again["state"] == "pending"
    assert again["description"].startswith("Planning again after: cannot fetch the pipeline: ")
    assert error["state"] == "error" and error["description"].startswith("Error: cannot fetch the pipeline: ")
    assert client.app[RUNTIME].queue.pipeline(pipeline_id).state is PipelineState.error
