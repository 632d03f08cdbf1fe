"""End to end with real Podman: a signed delivery becomes a job that runs, and its statuses reach the forge."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bot.keys import RUNTIME, STATUS
from config.settings import SecretSpec, Settings
from runner.logs import read_log
from runner.models import Job, JobState
from tests.bot.api_helpers import podman_engine
from tests.bot.webhook_helpers import (
    ENV, PUBLIC_URL, FakeForge, fake_forge, fixture_json, github_headers, open_client, planned_jobs,
)
from tests.conftest import git

pytestmark = [pytest.mark.slow, pytest.mark.podman]
__all__ = ["fake_forge"]  # a fixture

Client = TestClient[web.Request, web.Application]
MakeRepo = Callable[..., tuple[Path, str]]
TOKENS = {"FORGECI_GITHUB_TOKEN": "ghp-lifecycle"}


def steps(*runs: tuple[str, str], header: str = "") -> str:
    return header + "".join(f'[[steps]]\nname = "{name}"\nrun = """{run}"""\n' for name, run in runs)


def with_forge(settings: Settings, forge: FakeForge, **secrets: SecretSpec) -> Settings:
    return dataclasses.replace(
        settings, github=dataclasses.replace(settings.github, api_url=forge.url),
        server=dataclasses.replace(settings.server, public_url=PUBLIC_URL), secrets=secrets or settings.secrets)


async def deliver(client: Client, event: str, payload: dict[str, Any]) -> list[int]:
    """A signed delivery; the jobs of the pipeline it made, once the coordinator planned them (after the 202)."""
    body = json.dumps(payload).encode()
    response = await client.post("/webhooks/github", data=body, headers=github_headers(event, body))
    assert response.status == 202, await response.text()
    answer = await response.json()
    assert answer["jobs"] == []  # the handler never reads the repository: planning does
    [pipeline_id] = answer["pipelines"]
    return await planned_jobs(client, pipeline_id, timeout=120)


def push_of(repo: Path, sha: str, branch: str = "main") -> dict[str, Any]:
    """The real fixture, pointed at a local repository: its clone URL, branch and commit."""
    payload = fixture_json("push.with-new-branch.json")
    payload["repository"]["clone_url"] = str(repo)
    payload.update(ref=f"refs/heads/{branch}", after=sha)
    return payload


async def wait_job(client: Client, job_id: int, states: set[JobState], timeout: float = 120) -> Job:
    queue = client.app[RUNTIME].queue
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = queue.get(job_id)
        if job.state in states:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} is {queue.get(job_id).state}, never {states}")


def log_of(client: Client, job_id: int) -> str:
    return "\n".join(line.text for line in read_log(client.app[RUNTIME].layout.log_file(job_id)))


async def final_status_posted(client: Client, forge: FakeForge, timeout: float = 15) -> None:
    """The job's row turns terminal a moment before its event reaches the reporter: wait for the final post."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await client.app[STATUS].idle()
        posts = forge.statuses()
        if posts and posts[-1].body["state"] != "pending":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no final status within {timeout}s: {[p.body for p in forge.statuses()]}")


async def test_push_runs_and_every_status_is_posted_in_order(
        settings: Settings, fake_forge: FakeForge, make_repo: MakeRepo) -> None:
    repo, sha = make_repo({".forgeci.toml": steps(("install", "sleep 1; echo installed"),
                                                  ("test", "sleep 1; echo tested"))})
    client = await open_client(
        with_forge(settings, fake_forge), {**ENV, **TOKENS}, workers=True, engine=podman_engine(settings))
    try:
        [job_id] = await deliver(client, "push", push_of(repo, sha))
        job = await wait_job(client, job_id, {s for s in JobState if s.is_terminal})
        assert job.state is JobState.success, log_of(client, job_id)
        await final_status_posted(client, fake_forge)
        posts = fake_forge.statuses()
        expected = [("pending", "Queued"), ("pending", "Running"), ("pending", "Running step 1/2: install"),
                    ("pending", "Running step 2/2: test")]
        pending = [(p.body["state"], p.body["description"]) for p in posts[:-1]]
        # In order, never an older state after a newer one; a busy loop may coalesce a state that was
        # superseded before it went out, but a step lasting a second is always reported.
        assert pending == [e for e in expected if e in pending]
        assert ("pending", "Running step 2/2: test") in pending
        assert posts[-1].body["state"] == "success" and posts[-1].body["description"].startswith("Passed in ")
        for post in posts:
            assert post.path == f"/repos/Codertocat/Hello-World/statuses/{sha}"
            assert post.body["target_url"] == f"{PUBLIC_URL}/dashboard/jobs/{job_id}"
            assert post.body["context"] == "forgeci/ci"
            assert post.headers["Authorization"] == "token ghp-lifecycle"
    finally:
        await client.close()


async def test_failed_step_is_named_in_the_final_status(
        settings: Settings, fake_forge: FakeForge, make_repo: MakeRepo) -> None:
    repo, sha = make_repo({".forgeci.toml": steps(("build", "true"), ("test", "exit 3"))})
    client = await open_client(
        with_forge(settings, fake_forge), {**ENV, **TOKENS}, workers=True, engine=podman_engine(settings))
    try:
        [job_id] = await deliver(client, "push", push_of(repo, sha))
        assert (await wait_job(client, job_id, {JobState.failure})).state is JobState.failure
        await final_status_posted(client, fake_forge)
        final = fake_forge.statuses()[-1].body
        assert final["state"] == "failure"
        assert final["description"].startswith("Failed at step 2: test (exit 3)")
    finally:
        await client.close()


async def test_new_push_cancels_the_running_job(
        settings: Settings, fake_forge: FakeForge, make_repo: MakeRepo) -> None:
    repo, first_sha = make_repo({".forgeci.toml": steps(("wait", "echo started; sleep 120"))})
    client = await open_client(
        with_forge(settings, fake_forge), {**ENV, **TOKENS}, workers=True, engine=podman_engine(settings))
    try:
        [first] = await deliver(client, "push", push_of(repo, first_sha))
        await wait_job(client, first, {JobState.running})
        while not client.app[RUNTIME].queue.get(first).steps:  # its step has started
            await asyncio.sleep(0.05)
        (repo / ".forgeci.toml").write_text(steps(("quick", "echo second")))
        git(repo, "commit", "-qam", "second")
        second_sha = git(repo, "rev-parse", "HEAD")
        [second] = await deliver(client, "push", push_of(repo, second_sha))
        started = time.monotonic()
        job = await wait_job(client, first, {s for s in JobState if s.is_terminal}, timeout=60)
        assert job.state is JobState.cancelled
        assert time.monotonic() - started < 45  # stopped, not waited out (the step sleeps 120 s)
        assert (await wait_job(client, second, {JobState.success})).state is JobState.success
        deadline = time.monotonic() + 15  # both final posts, not just the rows (see final_status_posted)
        while True:
            await client.app[STATUS].idle()
            finals = {p.path.rsplit("/", 1)[1]: p.body for p in fake_forge.statuses()}
            done = all(finals.get(sha, {}).get("state") not in (None, "pending") for sha in (first_sha, second_sha))
            if done or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert finals[first_sha]["state"] == "error" and finals[first_sha]["description"].startswith("Cancelled")
        assert finals[second_sha]["state"] == "success"
    finally:
        await client.close()


async def test_fork_pull_request_gets_no_secrets(
        settings: Settings, fake_forge: FakeForge, make_repo: MakeRepo) -> None:
    secret = "npm-Secret-Value-7"
    toml = steps(("check", 'echo "token=${NPM_TOKEN:-none}"'), header='secrets = ["NPM_TOKEN"]\n')
    repo, sha = make_repo({".forgeci.toml": toml})
    git(repo, "update-ref", "refs/pull/2/head", sha)  # where GitHub keeps a pull request's head
    settings = with_forge(settings, fake_forge, NPM_TOKEN=SecretSpec(env="FORGECI_SECRET_NPM_TOKEN"))
    client = await open_client(
        settings, {**ENV, **TOKENS, "FORGECI_SECRET_NPM_TOKEN": secret}, workers=True, engine=podman_engine(settings))
    try:
        payload = fixture_json("pull_request.opened.json")
        payload["repository"]["clone_url"] = str(repo)
        payload["pull_request"]["head"]["sha"] = sha
        payload["pull_request"]["head"]["repo"]["full_name"] = "mallory/Hello-World"
        [job_id] = await deliver(client, "pull_request", payload)
        job = await wait_job(client, job_id, {s for s in JobState if s.is_terminal})
        text = log_of(client, job_id)
        assert job.state is JobState.success, text
        assert job.spec.fork is True and job.spec.ref == "refs/pull/2/head"
        assert "token=none" in text and "withheld" in text and secret not in text
    finally:
        await client.close()


async def test_a_failing_forge_never_fails_or_slows_the_job(
        settings: Settings, fake_forge: FakeForge, make_repo: MakeRepo) -> None:
    fake_forge.status_delay = 2.0  # slow, and then failing: every post waits 2 s and gets a 500

    def broken(recorded: Any) -> web.Response | None:
        fake_forge.script.append(broken)  # answer every request this way
        return web.json_response({"message": "down"}, status=500)

    fake_forge.script.append(broken)
    repo, sha = make_repo({".forgeci.toml": steps(("one", "echo one"), ("two", "echo two"))})
    client = await open_client(
        with_forge(settings, fake_forge), {**ENV, **TOKENS}, workers=True, engine=podman_engine(settings))
    try:
        [job_id] = await deliver(client, "push", push_of(repo, sha))
        job = await wait_job(client, job_id, {s for s in JobState if s.is_terminal}, timeout=60)
        assert job.state is JobState.success, log_of(client, job_id)
        assert job.duration is not None and job.duration < 30  # not held up by 2 s posts and their retries
        assert fake_forge.statuses()  # the reporter did try
    finally:
        await client.close()


DIAMOND = "".join(f'[jobs.{name}]\nneeds = {needs}\nsteps = [{{ name = "{name}", run = "{run}" }}]\n'
                  for name, needs, run in (("a", [], "echo a"), ("b", ["a"], "sleep 2; echo b"),
                                           ("c", ["a"], "sleep 2; echo c"), ("d", ["b", "c"], "echo d")))


async def test_a_pushed_diamond_runs_its_middle_in_parallel_and_posts_a_status_per_job(
        settings: Settings, fake_forge: FakeForge, make_repo: MakeRepo) -> None:
    """Through a pushed webhook, so the concurrency group (one pipeline of a branch at a time, all its jobs
    together) is the one exercised; each job in its own container at the pinned sha."""
    repo, sha = make_repo({".forgeci.toml": DIAMOND})
    settings = dataclasses.replace(settings, queue=dataclasses.replace(settings.queue, max_concurrent=4))
    client = await open_client(
        with_forge(settings, fake_forge), {**ENV, **TOKENS}, workers=True, engine=podman_engine(settings))
    try:
        ids = await deliver(client, "push", push_of(repo, sha))
        jobs = {job.display: job for job in [await wait_job(client, i, {s for s in JobState if s.is_terminal},
                                                             timeout=180) for i in ids]}
        assert all(job.state is JobState.success for job in jobs.values()), {d: log_of(client, j.id)
                                                                             for d, j in jobs.items()}
        assert all(job.spec.sha == sha for job in jobs.values())
        b, c, d = (jobs[name].steps[0] for name in "bcd")
        assert b.started_at < c.finished_at and c.started_at < b.finished_at  # type: ignore[operator]  # overlap
        assert d.started_at >= max(b.finished_at, c.finished_at)  # type: ignore[operator,type-var]
        deadline = time.monotonic() + 15
        while True:
            await client.app[STATUS].idle()
            finals = {p.body["context"]: p.body for p in fake_forge.statuses()}
            if finals.get("forgeci/ci", {}).get("state") == "success" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert set(finals) == {"forgeci/ci", *(f"forgeci/ci/{name}" for name in "abcd")}
        assert all(post["state"] == "success" for post in finals.values()), finals
        assert finals["forgeci/ci"]["description"].startswith("Passed: 4 jobs in ")
    finally:
        await client.close()
