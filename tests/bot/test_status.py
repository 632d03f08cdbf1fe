"""Commit statuses from the real app to a fake forge API: order, content, coalescing, retries, rate limits, Apps."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bot.keys import RUNTIME, STATUS
from runner.events import JobEvent
from runner.models import JobSpec, JobState, StepState
from tests.bot.forge_payloads import GITLAB_HEAD, gitea_push, gitlab_push
from tests.bot.webhook_helpers import (
    ENV, PUBLIC_URL, FakeForge, Recorded, answer_once, fake_forge, fixture_json, gitea_headers, github_headers,
    gitlab_headers, open_client, plan_here, quick_settings,
)

__all__ = ["fake_forge"]  # a fixture

Client = TestClient[web.Request, web.Application]
TOKENS = {"FORGECI_GITHUB_TOKEN": "ghp-test-token", "FORGECI_GITEA_TOKEN": "gitea-test-token",
          "FORGECI_GITLAB_TOKEN": "glpat-test-token"}
PUSH = fixture_json("push.with-new-branch.json")
SHA = PUSH["after"]
STATUS_PATH = f"/repos/Codertocat/Hello-World/statuses/{SHA}"


def forge_settings(shared_dir: Path, forge: FakeForge, **changes: Any) -> Any:
    apis: dict[str, dict[str, Any]] = {"github": {"api_url": forge.url}, "gitea": {"api_url": forge.url + "/api/v1"},
                                       "gitlab": {"api_url": forge.url + "/api/v4"}}
    for section, values in changes.items():
        apis[section] = {**apis.get(section, {}), **values}
    return quick_settings(shared_dir, **apis)


@pytest.fixture
async def client(shared_dir: Path, fake_forge: FakeForge) -> AsyncIterator[Client]:
    client = await open_client(forge_settings(shared_dir, fake_forge), {**ENV, **TOKENS})
    client.app[STATUS].retry_base = 0.05  # keep retries quick; the schedule itself is tested by its shape
    yield client
    await client.close()


async def deliver(client: Client, payload: dict[str, Any] = PUSH, **kw: Any) -> int:
    """A push delivery; the id of the pipeline it made (planning)."""
    body = json.dumps(payload).encode()
    response = await client.post("/webhooks/github", data=body, headers=github_headers("push", body, **kw))
    assert response.status == 202, await response.text()
    return int((await response.json())["pipelines"][0])


async def push(client: Client, payload: dict[str, Any] = PUSH, **kw: Any) -> int:
    """A push, planned as the coordinator does into a one-job pipeline (its file given, not fetched); its job.
    A pipeline of one job posts exactly what a webhook job always did."""
    [job_id] = await plan_here(client, await deliver(client, payload, **kw))
    return job_id


class Runner:
    """Moves a job through the queue and publishes its events the way runner.worker does."""

    def __init__(self, client: Client, job_id: int) -> None:
        self.runtime = client.app[RUNTIME]
        self.job_id = job_id

    def publish(self, state: str, kind: str = "state", **data: Any) -> None:
        self.runtime.events.publish(JobEvent(self.job_id, state, kind, data))

    def start(self) -> None:
        job = self.runtime.queue.claim("fake-runner", 60)
        assert job is not None and job.id == self.job_id
        self.publish("running", attempts=job.attempts)

    def step(self, index: int, name: str, total: int, exit_code: int | None = None) -> None:
        self.runtime.queue.start_step(self.job_id, index, name)
        self.publish("running", "step", index=index, name=name, total=total)
        if exit_code is not None:
            state = StepState.success if exit_code == 0 else StepState.failure
            self.runtime.queue.finish_step(self.job_id, index, state, exit_code)
            self.publish("running", "step_done", index=index, name=name, total=total, step_state=str(state))

    def finish(self, state: JobState, error: str | None = None) -> None:
        self.runtime.queue.complete(self.job_id, state, error, "fake-runner")
        self.publish(state.value, error=error)


def brief(records: list[Recorded]) -> list[tuple[str, str]]:
    return [(r.body["state"], r.body["description"]) for r in records]


async def test_statuses_follow_the_job_in_order(client: Client, fake_forge: FakeForge) -> None:
    job_id = await push(client)
    await fake_forge.wait_statuses(1)
    runner = Runner(client, job_id)
    runner.start()
    await fake_forge.wait_statuses(2)
    runner.step(0, "install", 2, exit_code=0)
    await fake_forge.wait_statuses(3)
    runner.step(1, "test", 2, exit_code=3)
    await fake_forge.wait_statuses(4)
    runner.finish(JobState.failure, "step test failed (exit 3)")
    posts = await fake_forge.wait_statuses(5)
    await client.app[STATUS].idle()
    assert brief(posts)[:4] == [("pending", "Queued"), ("pending", "Running"),
                                ("pending", "Running step 1/2: install"), ("pending", "Running step 2/2: test")]
    state, description = brief(posts)[4]
    assert state == "failure" and description.startswith("Failed at step 2: test (exit 3) after ")
    assert len(fake_forge.statuses()) == 5  # step_done events post nothing
    for post in posts:
        assert post.path == STATUS_PATH and post.method == "POST"
        assert post.body["context"] == "forgeci/ci"
        assert post.body["target_url"] == f"{PUBLIC_URL}/dashboard/jobs/{job_id}"
        assert post.headers["Authorization"] == "token ghp-test-token"


@pytest.mark.parametrize("state, error, forge_state, description", [
    (JobState.success, None, "success", "Passed in "),
    (JobState.skipped, "skipped: refs/heads/master is not in the pipeline's branches ['release/*']", "success",
     "Skipped: refs/heads/master is not in the pipeline's branches"),
    (JobState.failure, "invalid pipeline: .forgeci.toml: steps: missing", "failure", "Failed: invalid pipeline"),
    (JobState.timeout, "step test exceeded its time limit", "failure", "Timed out: step test exceeded"),
    (JobState.cancelled, "cancelled during step test", "error", "Cancelled during step test"),
    (JobState.error, "checkout failed: could not reach the server", "error", "Error: checkout failed"),
])
async def test_final_states_map_to_forge_states(client: Client, fake_forge: FakeForge, state: JobState,
                                                error: str | None, forge_state: str, description: str) -> None:
    job_id = await push(client)
    runner = Runner(client, job_id)
    await fake_forge.wait_statuses(1)
    runner.start()
    await fake_forge.wait_statuses(2)
    runner.finish(state, error)
    final = (await fake_forge.wait_statuses(3))[-1].body
    assert final["state"] == forge_state and final["description"].startswith(description)
    assert len(final["description"]) <= 140


async def test_updates_are_coalesced_and_never_go_back(client: Client, fake_forge: FakeForge) -> None:
    fake_forge.status_delay = 0.3  # a slow forge: events arrive faster than posts go out
    job_id = await push(client)
    runner = Runner(client, job_id)
    runner.start()
    for index in range(20):
        runner.step(index, f"s{index}", 20, exit_code=0)
        await asyncio.sleep(0.01)
    runner.finish(JobState.success)
    await asyncio.sleep(0.05)
    await client.app[STATUS].idle()
    posts = brief(fake_forge.statuses())
    assert posts[-1][0] == "success"
    assert len(posts) < 10  # 23 updates, most of them superseded while a post was in flight
    order = ["Queued", "Running"] + [f"Running step {i + 1}/20: s{i}" for i in range(20)]
    seen = [order.index(d) for _, d in posts[:-1]]
    assert seen == sorted(seen)  # an older state never follows a newer one


async def test_server_errors_are_retried_with_backoff(client: Client, fake_forge: FakeForge) -> None:
    fake_forge.script += [answer_once("/statuses/", 502), answer_once("/statuses/", 503)]
    await push(client)
    posts = await fake_forge.wait_statuses(3)
    await client.app[STATUS].idle()
    assert [p.body["description"] for p in posts] == ["Queued"] * 3
    assert posts[2].at - posts[1].at >= posts[1].at - posts[0].at  # the wait doubles
    assert len(fake_forge.statuses()) == 3


async def test_rate_limit_waits_for_the_reset(client: Client, fake_forge: FakeForge) -> None:
    reset = int(time.time()) + 2
    fake_forge.script.append(answer_once("/statuses/", 403, {"message": "API rate limit exceeded"}, {
        "X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)}))
    await push(client)
    posts = await fake_forge.wait_statuses(2, timeout=30)
    assert posts[1].at >= reset  # not one request before GitHub said the limit resets
    assert posts[1].body["description"] == "Queued"


async def test_secondary_rate_limit_honours_retry_after(client: Client, fake_forge: FakeForge) -> None:
    fake_forge.script.append(answer_once("/statuses/", 403, {"message": "You have exceeded a secondary rate limit"},
                                         {"Retry-After": "2"}))
    await push(client)
    posts = await fake_forge.wait_statuses(2, timeout=30)
    assert posts[1].at - posts[0].at >= 1.9


async def test_a_refused_status_is_dropped_and_later_ones_still_go(client: Client, fake_forge: FakeForge,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    fake_forge.script.append(answer_once("/statuses/", 422, {"message": "Validation Failed", "errors": []}))
    caplog.set_level(logging.INFO)
    job_id = await push(client)
    await fake_forge.wait_statuses(1)
    await client.app[STATUS].idle()
    Runner(client, job_id).start()
    posts = await fake_forge.wait_statuses(2)
    assert brief(posts) == [("pending", "Queued"), ("pending", "Running")]
    assert "not posted" in caplog.text
    assert "ghp-test-token" not in caplog.text


async def test_superseded_job_reports_cancelled(client: Client, fake_forge: FakeForge) -> None:
    first = await push(client)
    await fake_forge.wait_statuses(1)
    second = await deliver(client, {**PUSH, "after": "b" * 40})
    await plan_here(client, second)
    posts = await fake_forge.wait_statuses(3)
    await client.app[STATUS].idle()
    by_sha = [(p.path.rsplit("/", 1)[1], p.body["state"], p.body["description"]) for p in posts]
    assert (SHA, "error", f"Cancelled: superseded by pipeline {second}") in by_sha
    assert ("b" * 40, "pending", "Queued") in by_sha
    assert len(posts) == 3 and {p.body["context"] for p in posts} == {"forgeci/ci"}
    assert client.app[RUNTIME].queue.get(first).state is JobState.cancelled


async def test_jobs_without_a_forge_post_nothing(client: Client, fake_forge: FakeForge) -> None:
    runtime = client.app[RUNTIME]
    job_id = runtime.queue.enqueue(JobSpec(repo="/srv/repo", ref="main", sha="c" * 40))
    runtime.events.publish(JobEvent(job_id, "queued"))
    await push(client)  # a webhook job after it, to know the reporter got that far
    await fake_forge.wait_statuses(1)
    await client.app[STATUS].idle()
    assert len(fake_forge.statuses()) == 1


async def test_gitea_and_gitlab_statuses(client: Client, fake_forge: FakeForge) -> None:
    body = json.dumps(gitea_push()).encode()
    response = await client.post("/webhooks/gitea", data=body, headers=gitea_headers("push", body))
    [gitea_job] = await plan_here(client, (await response.json())["pipelines"][0])
    body = json.dumps(gitlab_push()).encode()
    response = await client.post("/webhooks/gitlab", data=body, headers=gitlab_headers("Push Hook"))
    [gitlab_job] = await plan_here(client, (await response.json())["pipelines"][0])
    posts = await fake_forge.wait_statuses(2)
    gitea_post = next(p for p in posts if p.path.startswith("/api/v1/"))
    assert gitea_post.path == f"/api/v1/repos/gitea/webhooks/statuses/{gitea_push()['after']}"
    assert gitea_post.headers["Authorization"] == "token gitea-test-token"
    assert gitea_post.body["state"] == "pending" and gitea_post.body["context"] == "forgeci/ci"
    gitlab_post = next(p for p in posts if p.path.startswith("/api/v4/"))
    assert gitlab_post.path == f"/api/v4/projects/15/statuses/{GITLAB_HEAD}"
    assert gitlab_post.headers["PRIVATE-TOKEN"] == "glpat-test-token"
    assert (gitlab_post.body["state"], gitlab_post.body["name"]) == ("pending", "forgeci/ci")
    runner = Runner(client, gitlab_job)
    runner.publish("queued")  # the same state again: GitLab would refuse it, so it is not sent
    await asyncio.sleep(0.1)
    await client.app[STATUS].idle()
    assert len(fake_forge.statuses()) == 2
    # Claim the GitLab job (the Gitea job is older and first in line: cancel it out of the way).
    client.app[RUNTIME].queue.cancel(gitea_job)
    runner.start()
    await fake_forge.wait_statuses(3)
    runner.finish(JobState.cancelled, "cancelled")
    posts = await fake_forge.wait_statuses(4)
    await client.app[STATUS].idle()
    assert [p.body["state"] for p in fake_forge.statuses() if p.path.startswith("/api/v4/")] == [
        "pending", "running", "canceled"]


async def test_gitlab_429_honours_retry_after(client: Client, fake_forge: FakeForge) -> None:
    fake_forge.script.append(answer_once("/api/v4/", 429, {"message": "Retry later"}, {"Retry-After": "1"}))
    body = json.dumps(gitlab_push()).encode()
    response = await client.post("/webhooks/gitlab", data=body, headers=gitlab_headers("Push Hook"))
    await plan_here(client, (await response.json())["pipelines"][0])
    posts = await fake_forge.wait_statuses(2, timeout=30)
    assert posts[1].at - posts[0].at >= 0.9


# -- GitHub App -------------------------------------------------------------------------------------------

@pytest.fixture
def app_key(tmp_path: Path) -> tuple[Path, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "app.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path, key.public_key()


def token_endpoint(public_key: Any, tokens: list[str], expires_in: float = 3600) -> Any:
    """Answers POST /app/installations/1/access_tokens, checking the App's JWT like GitHub does."""

    def respond(recorded: Recorded) -> web.Response | None:
        if recorded.method != "POST" or not recorded.path.endswith("/access_tokens"):
            return None
        scheme, _, token = recorded.headers["Authorization"].partition(" ")
        claims = jwt.decode(token, public_key, algorithms=["RS256"])
        assert scheme.lower() == "bearer" and claims["iss"] == "4242"
        assert claims["exp"] - claims["iat"] <= 600
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=expires_in)
        return web.json_response({"token": tokens.pop(0), "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ")},
                                 status=201)

    return respond


async def test_github_app_token_is_fetched_once_and_cached(shared_dir: Path, fake_forge: FakeForge,
                                                           app_key: tuple[Path, Any]) -> None:
    path, public_key = app_key
    settings = forge_settings(shared_dir, fake_forge, github={"app_id": 4242, "private_key_path": str(path)})
    fake_forge.script.append(token_endpoint(public_key, ["ghs-installation-1"]))
    client = await open_client(settings, ENV)  # no FORGECI_GITHUB_TOKEN: the App's key is the credential
    try:
        await push(client)
        await push(client, {**PUSH, "ref": "refs/heads/other", "after": "d" * 40})
        posts = await fake_forge.wait_statuses(2)
        await client.app[STATUS].idle()
        assert {p.headers["Authorization"] for p in posts} == {"token ghs-installation-1"}
        token_requests = [r for r in fake_forge.requests if r.path == "/app/installations/1/access_tokens"]
        assert len(token_requests) == 1
    finally:
        await client.close()


async def test_github_app_token_is_renewed_when_it_expires(shared_dir: Path, fake_forge: FakeForge,
                                                           app_key: tuple[Path, Any]) -> None:
    path, public_key = app_key
    settings = forge_settings(shared_dir, fake_forge, github={"app_id": 4242, "private_key_path": str(path)})
    # The first token expires within the renewal margin, so every use asks for a fresh one.
    fake_forge.script += [token_endpoint(public_key, ["ghs-short"], expires_in=30),
                          token_endpoint(public_key, ["ghs-second"])]
    client = await open_client(settings, ENV)
    try:
        await push(client)
        await fake_forge.wait_statuses(1)
        await client.app[STATUS].idle()
        await push(client, {**PUSH, "ref": "refs/heads/other", "after": "d" * 40})
        posts = await fake_forge.wait_statuses(2)
        assert [p.headers["Authorization"] for p in posts] == ["token ghs-short", "token ghs-second"]
    finally:
        await client.close()


async def test_github_app_finds_the_installation_when_the_delivery_lacks_it(
        shared_dir: Path, fake_forge: FakeForge, app_key: tuple[Path, Any]) -> None:
    path, public_key = app_key
    settings = forge_settings(shared_dir, fake_forge, github={"app_id": 4242, "private_key_path": str(path)})
    fake_forge.script += [answer_once("/repos/Codertocat/Hello-World/installation", 200, {"id": 1}, method="GET"),
                          token_endpoint(public_key, ["ghs-found"])]
    client = await open_client(settings, ENV)
    try:
        payload = {k: v for k, v in PUSH.items() if k != "installation"}
        await push(client, payload)
        [post] = await fake_forge.wait_statuses(1)
        assert post.headers["Authorization"] == "token ghs-found"
        lookup = next(r for r in fake_forge.requests if r.path.endswith("/installation"))
        assert lookup.headers["Authorization"].lower().startswith("bearer ")
    finally:
        await client.close()


async def test_unreadable_app_key_fails_startup_clearly(shared_dir: Path, fake_forge: FakeForge) -> None:
    settings = forge_settings(shared_dir, fake_forge, github={"app_id": 4242, "private_key_path": str(shared_dir / "missing.pem")})
    with pytest.raises(Exception, match="private key"):
        await open_client(settings, ENV)


async def test_a_job_the_start_up_reap_ends_gets_its_final_status(shared_dir: Path, fake_forge: FakeForge) -> None:
    """The reporter subscribes before the worker pool reaps, so a job a crash left running and that is out of
    retries ends `error` on the forge too, instead of keeping `pending` forever."""
    settings = forge_settings(shared_dir, fake_forge, queue={"max_retries": 0})
    from runner.queue import Queue
    from runner.worker import embedded_prefix

    settings.data_dir.mkdir(parents=True)
    with Queue(settings.data_dir / "queue.db", max_retries=0) as queue:  # what a crashed server left
        job_id = queue.enqueue(JobSpec(repo="https://github.com/Codertocat/Hello-World.git", ref="refs/heads/main",
                                       sha=SHA, event="push",
                                       meta={"forge": "github", "repository": "Codertocat/Hello-World"}))
        assert queue.claim(f"{embedded_prefix()}/123.456", 600) is not None
    client = await open_client(settings, {**ENV, **TOKENS}, workers=True)
    try:
        await fake_forge.wait_statuses(1)
        await client.app[STATUS].idle()
        assert client.app[RUNTIME].queue.get(job_id).state is JobState.error
        [post] = fake_forge.statuses()
        assert post.path == STATUS_PATH and post.body["state"] == "error"
    finally:
        await client.close()
