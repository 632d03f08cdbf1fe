"""GitHub deliveries, signed and posted to the real app: pipelines, redeliveries, superseding, forks, bad input."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bot.keys import RUNTIME
from runner.events import JobEvent, PipelineEvent
from runner.models import JobSpec, JobState, PipelineState
from runner.queue import Queue
from tests.bot.webhook_helpers import (
    ENV, FIXTURES, GITHUB_SECRET, fixture_body, fixture_json, form_body, github_headers, open_client, plan_here,
    queue_of, quick_settings, sign,
)


Client = TestClient[web.Request, web.Application]
REPO = "Codertocat/Hello-World"
CLONE = "https://github.com/Codertocat/Hello-World.git"


@pytest.fixture
async def client(shared_dir: Path) -> AsyncIterator[Client]:
    client = await open_client(quick_settings(shared_dir))
    yield client
    await client.close()


async def deliver(client: Client, event: str, payload: dict[str, Any] | bytes, **kw: Any) -> tuple[int, Any]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    response = await client.post("/webhooks/github", data=body, headers=github_headers(event, body, **kw))
    return response.status, await response.json()


def spec_of(client: Client, body: dict[str, Any]) -> JobSpec:
    """The trigger of the one pipeline a delivery made, which every job planned for it inherits."""
    [pipeline_id] = body["pipelines"]
    return queue_of(client).pipeline(pipeline_id).spec


def planning(client: Client) -> list[int]:
    """The pipelines waiting for the coordinator's planner (these tests run none: their repos are not fetched)."""
    return [record.id for record in queue_of(client).due_plans()]


# Every file in the shared fixtures, and what it must do (event, status, pipelines); a new fixture fails here
# until it is listed.
EXPECTED = {
    "ping.json": ("ping", 200, 0),
    "push.with-new-branch.json": ("push", 202, 1),
    "push.1.json": ("push", 202, 0),  # a tag deletion
    "pull_request.opened.json": ("pull_request", 202, 1),
    "pull_request.synchronize.json": ("pull_request", 202, 1),
    "pull_request.closed.json": ("pull_request", 202, 0),
}


def test_every_shared_fixture_is_covered() -> None:
    assert {p.name for p in FIXTURES.glob("*.json")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_each_fixture_delivered_signed(client: Client, name: str) -> None:
    event, status, pipelines = EXPECTED[name]
    got, body = await deliver(client, event, fixture_body(name))
    assert got == status, body
    if event == "ping":
        assert body["pong"] is True
        return
    assert len(body["pipelines"]) == pipelines and body["jobs"] == []  # jobs come from planning, later
    assert planning(client) == body["pipelines"]
    if not pipelines:
        assert body["reason"]  # says why: a deletion, a closed pull request


async def test_push_becomes_one_pipeline_at_after_and_its_job_inherits_it(client: Client) -> None:
    payload = fixture_json("push.with-new-branch.json")
    status, body = await deliver(client, "push", payload, delivery="d-push-1")
    assert status == 202
    [pipeline_id] = body["pipelines"]
    record = queue_of(client).pipeline(pipeline_id)
    assert record.state is PipelineState.planning and record.sha == payload["after"]
    spec = record.spec
    assert (spec.repo, spec.ref, spec.sha, spec.event) == (CLONE, "refs/heads/master", payload["after"], "push")
    assert spec.priority == 5 and spec.concurrency_group == f"github:{REPO}:master"
    assert spec.fork is False and spec.pr_number is None and spec.pipeline is None  # the file is read later
    meta = {
        "forge": "github", "repository": REPO, "delivery": "d-push-1", "pusher": "Codertocat", "sender": "Codertocat",
        "message": payload["head_commit"]["message"], "installation_id": "1",
        "default_branch": "master",  # a new branch (`before` all zeros): its changes are against the default branch
    }
    assert spec.meta == meta
    [job_id] = await plan_here(client, pipeline_id)
    job = queue_of(client).get(job_id)
    assert job.pipeline_id == pipeline_id and job.state is JobState.queued
    assert (job.spec.repo, job.spec.ref, job.spec.sha, job.spec.event, job.spec.concurrency_group) == (
        spec.repo, spec.ref, spec.sha, spec.event, spec.concurrency_group)
    assert job.spec.meta == {**meta, "pipeline": str(pipeline_id), "job": "ci"}


async def test_tag_push_is_a_tag_job_that_supersedes_nothing(client: Client) -> None:
    first = fixture_json("push.with-new-branch.json")
    await deliver(client, "push", first)
    tag = copy.deepcopy(first)
    tag.update(ref="refs/tags/v1.0", after="a" * 40)
    status, body = await deliver(client, "push", tag)
    assert status == 202 and "superseded" not in body and "superseded_pipelines" not in body
    spec = spec_of(client, body)
    assert spec.event == "tag" and spec.ref == "refs/tags/v1.0"
    assert len(planning(client)) == 2


async def test_pull_request_job_carries_pr_number_base_and_head(client: Client) -> None:
    payload = fixture_json("pull_request.synchronize.json")
    status, body = await deliver(client, "pull_request", payload)
    assert status == 202
    spec = spec_of(client, body)
    head = payload["pull_request"]["head"]["sha"]
    assert (spec.ref, spec.sha, spec.pr_number, spec.base_ref) == ("refs/pull/2/head", head, 2, "master")
    assert spec.event == "pull_request" and spec.repo == CLONE and spec.fork is False
    assert spec.concurrency_group == f"github:{REPO}:pr-2"
    assert spec.meta["action"] == "synchronize" and spec.meta["title"] == payload["pull_request"]["title"]


@pytest.mark.parametrize("head_repo", ["octocat-fork/Hello-World", None])
async def test_fork_pull_request_is_marked_fork(client: Client, head_repo: str | None) -> None:
    payload = fixture_json("pull_request.opened.json")
    if head_repo is None:
        payload["pull_request"]["head"]["repo"] = None  # the fork was deleted
    else:
        payload["pull_request"]["head"]["repo"]["full_name"] = head_repo
    _, body = await deliver(client, "pull_request", payload)
    spec = spec_of(client, body)
    assert spec.fork is True
    assert spec.repo == CLONE and spec.ref == "refs/pull/2/head"  # fetched from the base repository


@pytest.mark.parametrize("action", ["labeled", "assigned", "converted_to_draft", "edited", "closed"])
async def test_other_pull_request_actions_run_nothing(client: Client, action: str) -> None:
    payload = fixture_json("pull_request.opened.json")
    payload["action"] = action
    status, body = await deliver(client, "pull_request", payload)
    assert (status, body["pipelines"], body["jobs"]) == (202, [], [])
    assert action in body["reason"]


async def test_ready_for_review_runs(client: Client) -> None:
    payload = fixture_json("pull_request.opened.json")
    payload["action"] = "ready_for_review"
    status, body = await deliver(client, "pull_request", payload)
    assert status == 202 and len(body["pipelines"]) == 1


async def test_drafts_run_unless_run_drafts_is_false(client: Client, shared_dir: Path) -> None:
    payload = fixture_json("pull_request.opened.json")
    payload["pull_request"]["draft"] = True
    _, body = await deliver(client, "pull_request", payload)
    assert len(body["pipelines"]) == 1
    no_drafts = await open_client(quick_settings(shared_dir / "other", server={"run_drafts": False,
                                                                              "public_url": "http://x"}))
    try:
        status, body = await deliver(no_drafts, "pull_request", payload)
        assert (status, body["pipelines"], body["jobs"]) == (202, [], [])
        assert "draft" in body["reason"]
    finally:
        await no_drafts.close()


async def test_form_encoded_delivery(client: Client) -> None:
    raw = fixture_body("push.with-new-branch.json")
    body = form_body(raw)
    response = await client.post("/webhooks/github", data=body, headers=github_headers(
        "push", body, content_type="application/x-www-form-urlencoded"))
    assert response.status == 202
    assert spec_of(client, await response.json()).sha == json.loads(raw)["after"]


async def test_redelivery_answers_with_the_pipelines_it_made_and_their_jobs_by_now(client: Client) -> None:
    payload = fixture_json("push.with-new-branch.json")
    _, first = await deliver(client, "push", payload, delivery="same-delivery")
    status, again = await deliver(client, "push", payload, delivery="same-delivery")
    assert status == 202
    assert again["pipelines"] == first["pipelines"] and again["redelivery"] is True
    assert again["jobs"] == []  # not planned yet
    assert planning(client) == first["pipelines"]
    planned = await plan_here(client, first["pipelines"][0])
    _, later = await deliver(client, "push", payload, delivery="same-delivery")
    assert later["pipelines"] == first["pipelines"] and later["jobs"] == planned and later["redelivery"] is True
    concurrent = await asyncio.gather(*(deliver(client, "push", payload, delivery="burst") for _ in range(5)))
    assert len({tuple(body["pipelines"]) for _, body in concurrent}) == 1  # five copies at once: one pipeline
    [burst] = concurrent[0][1]["pipelines"]
    assert burst == first["pipelines"][0] + 1  # no other pipeline was made
    assert queue_of(client).pipeline(first["pipelines"][0]).state is PipelineState.cancelled  # superseded by it


async def test_202_means_committed(client: Client, shared_dir: Path) -> None:
    _, body = await deliver(client, "push", fixture_json("push.with-new-branch.json"))
    with Queue(client.app[RUNTIME].layout.db) as other:  # another connection sees it: it is on disk
        assert other.pipeline(body["pipelines"][0]).state is PipelineState.planning


async def test_recorded_pipelines_are_published_as_planning_and_their_jobs_as_queued(client: Client) -> None:
    events = client.app[RUNTIME].events
    seen: list[tuple[str, int, str]] = []

    async def listen() -> None:
        async for event in events.subscribe():
            if isinstance(event, PipelineEvent):
                seen.append(("pipeline", event.pipeline_id, event.state))
            elif isinstance(event, JobEvent):
                seen.append(("job", event.job_id, event.state))

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0)
    _, body = await deliver(client, "push", fixture_json("push.with-new-branch.json"))
    [pipeline_id] = body["pipelines"]
    await asyncio.sleep(0.05)
    assert seen == [("pipeline", pipeline_id, "planning")]
    [job_id] = await plan_here(client, pipeline_id)
    await asyncio.sleep(0.05)
    listener.cancel()
    assert seen[1:] == [("job", job_id, "queued"), ("pipeline", pipeline_id, "queued")]


async def test_new_push_supersedes_the_branch_older_pipelines(client: Client) -> None:
    payload = fixture_json("push.with-new-branch.json")
    queue = queue_of(client)
    _, first = await deliver(client, "push", payload)
    [first_job] = await plan_here(client, first["pipelines"][0])
    running = queue.claim("test-runner", 60)  # the first job is running somewhere
    assert running is not None and running.id == first_job
    _, second = await deliver(client, "push", {**payload, "after": "b" * 40})
    [second_job] = await plan_here(client, second["pipelines"][0])
    _, third = await deliver(client, "push", {**payload, "after": "c" * 40})
    assert second["superseded_pipelines"] == first["pipelines"]
    assert second["superseded"] == [first_job]  # running: flagged for its runner to stop
    assert queue.get(first_job).cancel_requested is True and queue.get(first_job).state is JobState.running
    assert third["superseded_pipelines"] == second["pipelines"]
    assert third["superseded"] == [second_job]  # queued: cancelled at once, saying why
    assert queue.get(second_job).state is JobState.cancelled
    assert queue.get(second_job).error == f"superseded by pipeline {third['pipelines'][0]}"
    assert queue.pipeline(second["pipelines"][0]).state is PipelineState.cancelled
    _, fourth = await deliver(client, "push", {**payload, "after": "e" * 40})
    assert fourth["superseded_pipelines"] == third["pipelines"]
    assert "superseded" not in fourth  # still planning: it had no job to cancel
    assert queue.pipeline(third["pipelines"][0]).state is PipelineState.cancelled
    other_branch = {**payload, "ref": "refs/heads/feature", "after": "d" * 40}
    _, fifth = await deliver(client, "push", other_branch)
    assert "superseded_pipelines" not in fifth
    assert planning(client) == fourth["pipelines"] + fifth["pipelines"]


async def test_synchronize_supersedes_the_pull_request_older_pipeline(client: Client) -> None:
    _, opened = await deliver(client, "pull_request", fixture_json("pull_request.opened.json"))
    opened_jobs = await plan_here(client, opened["pipelines"][0])
    _, synced = await deliver(client, "pull_request", fixture_json("pull_request.synchronize.json"))
    assert synced["superseded_pipelines"] == opened["pipelines"] and synced["superseded"] == opened_jobs
    assert queue_of(client).get(opened_jobs[0]).state is JobState.cancelled


async def test_superseding_can_be_turned_off(shared_dir: Path) -> None:
    client = await open_client(quick_settings(shared_dir, queue={"cancel_superseded": False}))
    try:
        payload = fixture_json("push.with-new-branch.json")
        _, first = await deliver(client, "push", payload)
        await plan_here(client, first["pipelines"][0])
        _, second = await deliver(client, "push", {**payload, "after": "b" * 40})
        assert "superseded" not in second and "superseded_pipelines" not in second
        assert queue_of(client).active_counts()[0] == 1  # the first pipeline's job is still queued
        assert planning(client) == second["pipelines"]
    finally:
        await client.close()


async def test_unknown_event_is_ignored(client: Client) -> None:
    status, body = await deliver(client, "star", {"action": "created"})
    assert (status, body) == (202, {"ignored": "star"})


# -- bad input --------------------------------------------------------------------------------------------

async def post_raw(client: Client, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    response = await client.post("/webhooks/github", data=body, headers=headers)
    text = await response.text()
    assert "Traceback" not in text
    return response.status, json.loads(text)


async def test_missing_or_wrong_signature_is_401(client: Client) -> None:
    body = fixture_body("push.with-new-branch.json")
    headers = github_headers("push", body)
    del headers["X-Hub-Signature-256"]
    status, error = await post_raw(client, body, headers)
    assert status == 401 and "X-Hub-Signature-256" in error["detail"]
    status, _ = await post_raw(client, body, github_headers("push", body, secret="not-the-secret"))
    assert status == 401
    tampered = body.replace(b"Codertocat", b"Mallory")
    status, _ = await post_raw(client, tampered, {**github_headers("push", body), "Content-Length": str(len(tampered))})
    assert status == 401
    assert planning(client) == [] and queue_of(client).active_counts()[0] == 0


@pytest.mark.parametrize("body, detail", [
    (b"{not json", "not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"\xff\xfe{}", "UTF-8"),
    (b"[1, 2]", "expected a JSON object"),
], ids=["not-json", "deep", "not-utf8", "array"])
async def test_bodies_that_are_not_a_json_object_are_400(client: Client, body: bytes, detail: str) -> None:
    status, error = await post_raw(client, body, github_headers("push", body))
    assert status == 400 and detail in error["detail"]


@pytest.mark.parametrize("drop, named", [
    (("after",), "after"),
    (("repository", "clone_url"), "repository.clone_url"),
    (("ref",), "ref"),
    (("repository",), "repository"),
])
async def test_push_lacking_what_it_needs_is_400_naming_it(client: Client, drop: tuple[str, ...], named: str) -> None:
    payload = fixture_json("push.with-new-branch.json")
    target = payload
    for key in drop[:-1]:
        target = target[key]
    del target[drop[-1]]
    status, error = await deliver(client, "push", payload)
    assert status == 400 and named in error["detail"]


async def test_pull_request_lacking_head_sha_is_400(client: Client) -> None:
    payload = fixture_json("pull_request.opened.json")
    payload["pull_request"]["head"]["sha"] = "not-a-sha"
    status, error = await deliver(client, "pull_request", payload)
    assert status == 400 and "pull_request.head.sha" in error["detail"]


async def test_form_without_payload_field_is_400(client: Client) -> None:
    body = b"other=1"
    status, error = await post_raw(client, body, github_headers(
        "push", body, content_type="application/x-www-form-urlencoded"))
    assert status == 400 and "payload" in error["detail"]


async def test_missing_event_or_delivery_header_is_400(client: Client) -> None:
    body = fixture_body("push.with-new-branch.json")
    for header in ("X-GitHub-Event", "X-GitHub-Delivery"):
        headers = github_headers("push", body)
        del headers[header]
        status, error = await post_raw(client, body, headers)
        assert status == 400 and header in error["detail"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "multipart/form-data; boundary=x"])
async def test_other_content_types_are_415(client: Client, content_type: str) -> None:
    body = fixture_body("push.with-new-branch.json")
    status, error = await post_raw(client, body, github_headers("push", body, content_type=content_type))
    assert status == 415 and "application/json" in error["detail"]


async def test_body_over_25_mb_is_413_before_it_is_read(client: Client) -> None:
    """Announce 30 MB, send a few bytes: the answer comes at once, without waiting for the rest."""
    host, port = client.server.host, client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    head = (f"POST /webhooks/github HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"X-GitHub-Event: push\r\nX-GitHub-Delivery: big\r\nX-Hub-Signature-256: {sign(b'x')}\r\n"
            f"Content-Length: {30 * 1024 * 1024}\r\n\r\n")
    writer.write(head.encode() + b"{" * 1024)
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 30)
    assert b" 413 " in status_line
    writer.close()


async def test_chunked_body_over_25_mb_is_413(client: Client) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        block = b" " * (1024 * 1024)
        for _ in range(27):
            yield block

    headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": "chunked", "Content-Type": "application/json",
               "X-Hub-Signature-256": sign(b"x")}
    response = await client.post("/webhooks/github", data=chunks(), headers=headers)
    assert response.status == 413
    assert (await response.json())["error"] == "request body too large"


async def test_unconfigured_secret_refuses_every_delivery(shared_dir: Path) -> None:
    env = {k: v for k, v in ENV.items() if "GITHUB" not in k}
    client = await open_client(quick_settings(shared_dir), env)
    try:
        body = fixture_body("push.with-new-branch.json")
        status, error = await post_raw(client, body, github_headers("push", body))
        assert status == 503 and "FORGECI_GITHUB_WEBHOOK_SECRET" in error["detail"]
        assert GITHUB_SECRET not in json.dumps(error)
    finally:
        await client.close()

