"""GitHub deliveries, signed and posted to the real app: jobs, redeliveries, superseding, forks, bad input."""

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
from runner.models import JobState
from runner.queue import Queue
from tests.bot.webhook_helpers import (
    ENV, FIXTURES, GITHUB_SECRET, fixture_body, fixture_json, form_body, github_headers, open_client, quick_settings,
    sign,
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


def queue_of(client: Client) -> Queue:
    return client.app[RUNTIME].queue


# Every file in the shared fixtures, and what it must do; a new fixture fails here until it is listed.
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
    event, status, jobs = EXPECTED[name]
    got, body = await deliver(client, event, fixture_body(name))
    assert got == status, body
    if event == "ping":
        assert body["pong"] is True
        return
    assert len(body["jobs"]) == jobs
    assert queue_of(client).active_counts()[0] == jobs
    if not jobs:
        assert body["reason"]  # says why: a deletion, a closed pull request


async def test_push_becomes_one_job_at_after(client: Client) -> None:
    payload = fixture_json("push.with-new-branch.json")
    status, body = await deliver(client, "push", payload, delivery="d-push-1")
    assert status == 202
    [job_id] = body["jobs"]
    job = queue_of(client).get(job_id)
    spec = job.spec
    assert (spec.repo, spec.ref, spec.sha, spec.event) == (CLONE, "refs/heads/master", payload["after"], "push")
    assert spec.priority == 5 and spec.concurrency_group == f"github:{REPO}:master"
    assert spec.fork is False and spec.pr_number is None
    assert spec.meta == {
        "forge": "github", "repository": REPO, "delivery": "d-push-1", "pusher": "Codertocat", "sender": "Codertocat",
        "message": payload["head_commit"]["message"], "installation_id": "1",
    }


async def test_tag_push_is_a_tag_job_that_supersedes_nothing(client: Client) -> None:
    first = fixture_json("push.with-new-branch.json")
    await deliver(client, "push", first)
    tag = copy.deepcopy(first)
    tag.update(ref="refs/tags/v1.0", after="a" * 40)
    status, body = await deliver(client, "push", tag)
    assert status == 202 and "superseded" not in body
    spec = queue_of(client).get(body["jobs"][0]).spec
    assert spec.event == "tag" and spec.ref == "refs/tags/v1.0"
    assert queue_of(client).active_counts()[0] == 2


async def test_pull_request_job_carries_pr_number_base_and_head(client: Client) -> None:
    payload = fixture_json("pull_request.synchronize.json")
    status, body = await deliver(client, "pull_request", payload)
    assert status == 202
    spec = queue_of(client).get(body["jobs"][0]).spec
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
    spec = queue_of(client).get(body["jobs"][0]).spec
    assert spec.fork is True
    assert spec.repo == CLONE and spec.ref == "refs/pull/2/head"  # fetched from the base repository


@pytest.mark.parametrize("action", ["labeled", "assigned", "converted_to_draft", "edited", "closed"])
async def test_other_pull_request_actions_run_nothing(client: Client, action: str) -> None:
    payload = fixture_json("pull_request.opened.json")
    payload["action"] = action
    status, body = await deliver(client, "pull_request", payload)
    assert (status, body["jobs"]) == (202, [])
    assert action in body["reason"]


async def test_ready_for_review_runs(client: Client) -> None:
    payload = fixture_json("pull_request.opened.json")
    payload["action"] = "ready_for_review"
    status, body = await deliver(client, "pull_request", payload)
    assert status == 202 and len(body["jobs"]) == 1


async def test_drafts_run_unless_run_drafts_is_false(client: Client, shared_dir: Path) -> None:
    payload = fixture_json("pull_request.opened.json")
    payload["pull_request"]["draft"] = True
    _, body = await deliver(client, "pull_request", payload)
    assert len(body["jobs"]) == 1
    no_drafts = await open_client(quick_settings(shared_dir / "other", server={"run_drafts": False,
                                                                              "public_url": "http://x"}))
    try:
        status, body = await deliver(no_drafts, "pull_request", payload)
        assert (status, body["jobs"]) == (202, [])
        assert "draft" in body["reason"]
    finally:
        await no_drafts.close()


async def test_form_encoded_delivery(client: Client) -> None:
    raw = fixture_body("push.with-new-branch.json")
    body = form_body(raw)
    response = await client.post("/webhooks/github", data=body, headers=github_headers(
        "push", body, content_type="application/x-www-form-urlencoded"))
    assert response.status == 202
    [job_id] = (await response.json())["jobs"]
    assert queue_of(client).get(job_id).spec.sha == json.loads(raw)["after"]


async def test_redelivery_answers_with_the_jobs_it_made(client: Client) -> None:
    payload = fixture_json("push.with-new-branch.json")
    _, first = await deliver(client, "push", payload, delivery="same-delivery")
    status, again = await deliver(client, "push", payload, delivery="same-delivery")
    assert status == 202
    assert again["jobs"] == first["jobs"] and again["redelivery"] is True
    assert queue_of(client).active_counts()[0] == 1
    concurrent = await asyncio.gather(*(deliver(client, "push", payload, delivery="burst") for _ in range(5)))
    assert len({tuple(body["jobs"]) for _, body in concurrent}) == 1  # five copies at once: one job
    assert len(queue_of(client).list_jobs()[0]) == 2  # (the burst's job superseded the first one)


async def test_202_means_committed(client: Client, shared_dir: Path) -> None:
    _, body = await deliver(client, "push", fixture_json("push.with-new-branch.json"))
    with Queue(client.app[RUNTIME].layout.db) as other:  # another connection sees it: it is on disk
        assert other.get(body["jobs"][0]).state is JobState.queued


async def test_enqueued_jobs_are_published_as_queued(client: Client) -> None:
    events = client.app[RUNTIME].events
    seen: list[tuple[int, str]] = []

    async def listen() -> None:
        async for event in events.subscribe():
            seen.append((event.job_id, event.state))

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0)
    _, body = await deliver(client, "push", fixture_json("push.with-new-branch.json"))
    await asyncio.sleep(0.05)
    listener.cancel()
    assert (body["jobs"][0], "queued") in seen


async def test_new_push_supersedes_the_branch_older_jobs(client: Client) -> None:
    payload = fixture_json("push.with-new-branch.json")
    _, first = await deliver(client, "push", payload)
    queue = queue_of(client)
    running = queue.claim("test-runner", 60)  # the first job is running somewhere
    assert running is not None and running.id == first["jobs"][0]
    second_payload = {**payload, "after": "b" * 40}
    _, second = await deliver(client, "push", second_payload)
    third_payload = {**payload, "after": "c" * 40}
    _, third = await deliver(client, "push", third_payload)
    assert second["superseded"] == first["jobs"]  # running: flagged for its runner to stop
    assert queue.get(first["jobs"][0]).cancel_requested is True
    assert third["superseded"] == second["jobs"]  # queued: cancelled at once
    assert queue.get(second["jobs"][0]).state is JobState.cancelled
    assert queue.get(third["jobs"][0]).state is JobState.queued
    other_branch = {**payload, "ref": "refs/heads/feature", "after": "d" * 40}
    _, fourth = await deliver(client, "push", other_branch)
    assert "superseded" not in fourth and queue.get(third["jobs"][0]).state is JobState.queued


async def test_synchronize_supersedes_the_pull_request_older_jobs(client: Client) -> None:
    _, opened = await deliver(client, "pull_request", fixture_json("pull_request.opened.json"))
    _, synced = await deliver(client, "pull_request", fixture_json("pull_request.synchronize.json"))
    assert synced["superseded"] == opened["jobs"]
    assert queue_of(client).get(opened["jobs"][0]).state is JobState.cancelled


async def test_superseding_can_be_turned_off(shared_dir: Path) -> None:
    client = await open_client(quick_settings(shared_dir, queue={"cancel_superseded": False}))
    try:
        payload = fixture_json("push.with-new-branch.json")
        await deliver(client, "push", payload)
        _, second = await deliver(client, "push", {**payload, "after": "b" * 40})
        assert "superseded" not in second
        assert queue_of(client).active_counts()[0] == 2
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
    assert queue_of(client).active_counts()[0] == 0


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

