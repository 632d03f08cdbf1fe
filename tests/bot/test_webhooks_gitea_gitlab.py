"""Gitea/Forgejo and GitLab deliveries to the real app: the same pipeline mapping, their own ways of signing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bot.keys import RUNTIME
from runner.models import JobSpec
from tests.bot.forge_payloads import (
    GITEA_HEAD, GITLAB_HEAD, gitea_pull_request, gitea_push, gitlab_merge_request, gitlab_push,
)
from tests.bot.webhook_helpers import ENV, gitea_headers, gitlab_headers, open_client, plan_here, quick_settings


Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(shared_dir: Path) -> AsyncIterator[Client]:
    client = await open_client(quick_settings(shared_dir))
    yield client
    await client.close()


async def gitea(client: Client, event: str, payload: dict[str, Any], **kw: Any) -> tuple[int, Any]:
    body = json.dumps(payload).encode()
    response = await client.post("/webhooks/gitea", data=body, headers=gitea_headers(event, body, **kw))
    return response.status, await response.json()


async def gitlab(client: Client, event: str, payload: dict[str, Any] | bytes, **kw: Any) -> tuple[int, Any]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    response = await client.post("/webhooks/gitlab", data=body, headers=gitlab_headers(event, **kw))
    return response.status, await response.json()


def spec_of(client: Client, body: dict[str, Any]) -> JobSpec:
    """The trigger of the one pipeline a delivery made, which every job planned for it inherits."""
    [pipeline_id] = body["pipelines"]
    return client.app[RUNTIME].queue.pipeline(pipeline_id).spec


def planning(client: Client) -> int:
    """How many pipelines wait for the coordinator's planner (these tests run none)."""
    return len(client.app[RUNTIME].queue.due_plans())


# -- Gitea / Forgejo ------------------------------------------------------------------------------------

@pytest.mark.parametrize("forgejo", [False, True])
async def test_gitea_push_becomes_a_pipeline(client: Client, forgejo: bool) -> None:
    status, body = await gitea(client, "push", gitea_push(), delivery="g-1", forgejo=forgejo)
    assert status == 202
    spec = spec_of(client, body)
    assert (spec.repo, spec.ref, spec.sha, spec.event) == (
        "https://gitea.example.test/gitea/webhooks.git", "refs/heads/develop", GITEA_HEAD, "push")
    assert spec.concurrency_group == "gitea:gitea/webhooks:develop"
    assert spec.meta == {"forge": "gitea", "repository": "gitea/webhooks", "delivery": "g-1", "pusher": "gitea",
                         "sender": "gitea", "message": "Webhooks Yay!\n",
                         "api_url": "https://gitea.example.test/api/v1",
                         "before": "28e1879d029cb852e4844d9c718537df08844e03", "default_branch": "master"}


async def test_gitea_tag_push_and_deletion(client: Client) -> None:
    _, body = await gitea(client, "push", gitea_push("refs/tags/v2"))
    assert spec_of(client, body).event == "tag"
    status, body = await gitea(client, "push", gitea_push(after="0" * 40))
    assert (status, body["pipelines"], body["jobs"]) == (202, [], [])


@pytest.mark.parametrize("event, action, pipelines", [
    ("pull_request", "opened", 1), ("pull_request", "reopened", 1), ("pull_request", "synchronized", 1),
    ("pull_request_sync", "synchronized", 1), ("pull_request", "closed", 0), ("pull_request", "edited", 0),
    ("pull_request", "label_updated", 0),
])
async def test_gitea_pull_request_actions(client: Client, event: str, action: str, pipelines: int) -> None:
    status, body = await gitea(client, event, gitea_pull_request(action))
    assert status == 202 and len(body["pipelines"]) == pipelines and body["jobs"] == []


async def test_gitea_pull_request_pipeline_and_fork(client: Client) -> None:
    _, body = await gitea(client, "pull_request", gitea_pull_request())
    opened_jobs = await plan_here(client, body["pipelines"][0])
    spec = spec_of(client, body)
    assert (spec.ref, spec.pr_number, spec.base_ref, spec.fork) == ("refs/pull/1/head", 1, "master", False)
    assert spec.sha == "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"
    assert spec.concurrency_group == "gitea:gitea/webhooks:pr-1"
    _, body = await gitea(client, "pull_request", gitea_pull_request("synchronized", fork=True, sha="e" * 40))
    assert spec_of(client, body).fork is True
    assert body["superseded"] == opened_jobs  # the synchronize cancelled the opened pipeline's job


async def test_gitea_signature_is_checked(client: Client) -> None:
    body = json.dumps(gitea_push()).encode()
    headers = gitea_headers("push", body, secret="wrong")
    response = await client.post("/webhooks/gitea", data=body, headers=headers)
    assert response.status == 401
    del headers["X-Gitea-Signature"]
    response = await client.post("/webhooks/gitea", data=body, headers=headers)
    assert response.status == 401 and "X-Gitea-Signature" in (await response.json())["detail"]
    assert planning(client) == 0


async def test_gitea_bad_bodies_and_unknown_events(client: Client) -> None:
    body = b"{oops"
    response = await client.post("/webhooks/gitea", data=body, headers=gitea_headers("push", body))
    assert response.status == 400 and "not JSON" in (await response.json())["detail"]
    payload = gitea_push()
    del payload["repository"]["clone_url"]
    status, error = await gitea(client, "push", payload)
    assert status == 400 and "repository.clone_url" in error["detail"]
    status, body = await gitea(client, "issues", {"action": "opened"})
    assert (status, body) == (202, {"ignored": "issues"})


async def test_gitea_redelivery(client: Client) -> None:
    _, first = await gitea(client, "push", gitea_push(), delivery="again")
    _, second = await gitea(client, "push", gitea_push(), delivery="again")
    assert second["pipelines"] == first["pipelines"] and second["redelivery"] is True


# -- GitLab -----------------------------------------------------------------------------------------------

async def test_gitlab_push_becomes_a_pipeline(client: Client) -> None:
    status, body = await gitlab(client, "Push Hook", gitlab_push(), delivery="l-1")
    assert status == 202
    spec = spec_of(client, body)
    assert (spec.repo, spec.ref, spec.sha, spec.event) == (
        "https://gitlab.example.test/mike/diaspora.git", "refs/heads/master", GITLAB_HEAD, "push")
    assert spec.concurrency_group == "gitlab:mike/diaspora:master"
    assert spec.meta["message"] == "fixed readme" and spec.meta["pusher"] == "jsmith"
    assert spec.meta["project_id"] == "15" and spec.meta["api_url"] == "https://gitlab.example.test/api/v4"
    assert spec.meta["before"] == "95790bf891e76fee5e1747ab589903a6a1f80f22" and spec.meta["default_branch"] == "master"


async def test_gitlab_tag_push_and_branch_deletion(client: Client) -> None:
    _, body = await gitlab(client, "Tag Push Hook", gitlab_push("refs/tags/v1.0.0"))
    assert spec_of(client, body).event == "tag"
    status, body = await gitlab(client, "Push Hook", gitlab_push(after="0" * 40))
    assert (status, body["pipelines"], body["jobs"]) == (202, [], [])


@pytest.mark.parametrize("payload, pipelines", [
    (gitlab_merge_request("open"), 1),
    (gitlab_merge_request("reopen"), 1),
    (gitlab_merge_request("update", oldrev="95790bf891e76fee5e1747ab589903a6a1f80f22"), 1),
    (gitlab_merge_request("update"), 0),  # a title or label change: no new commits
    (gitlab_merge_request("update", changes={"draft": {"previous": True, "current": False}}), 1),
    (gitlab_merge_request("close"), 0),
    (gitlab_merge_request("merge"), 0),
    (gitlab_merge_request("approved"), 0),
], ids=["open", "reopen", "new-commits", "edit", "ready", "close", "merge", "approved"])
async def test_gitlab_merge_request_actions(client: Client, payload: dict[str, Any], pipelines: int) -> None:
    status, body = await gitlab(client, "Merge Request Hook", payload)
    assert status == 202 and len(body["pipelines"]) == pipelines and body["jobs"] == []


async def test_gitlab_merge_request_pipeline_and_fork(client: Client) -> None:
    _, body = await gitlab(client, "Merge Request Hook", gitlab_merge_request("open", fork=True))
    spec = spec_of(client, body)
    assert (spec.ref, spec.sha, spec.pr_number, spec.base_ref) == (
        "refs/merge-requests/1/head", GITLAB_HEAD, 1, "master")
    assert spec.fork is True and spec.concurrency_group == "gitlab:mike/diaspora:pr-1"
    assert spec.repo == "https://gitlab.example.test/mike/diaspora.git"  # the target project serves the ref


async def test_gitlab_draft_follows_run_drafts(shared_dir: Path) -> None:
    client = await open_client(quick_settings(shared_dir, server={"run_drafts": False}))
    try:
        status, body = await gitlab(client, "Merge Request Hook", gitlab_merge_request("open", draft=True))
        assert (status, body["pipelines"], body["jobs"]) == (202, [], []) and "draft" in body["reason"]
    finally:
        await client.close()


async def test_gitlab_token_is_checked(client: Client) -> None:
    status, error = await gitlab(client, "Push Hook", gitlab_push(), token="guess")
    assert status == 401 and "X-Gitlab-Token" in error["detail"]
    status, _ = await gitlab(client, "Push Hook", gitlab_push(), token="")
    assert status == 401
    assert planning(client) == 0


async def test_gitlab_bad_input(client: Client) -> None:
    status, error = await gitlab(client, "Push Hook", b"[" * 50_000)
    assert status == 400 and "nested too deeply" in error["detail"]
    payload = gitlab_push()
    del payload["project"]["id"]
    status, error = await gitlab(client, "Push Hook", payload)
    assert status == 400 and "project.id" in error["detail"]
    status, body = await gitlab(client, "Pipeline Hook", {"object_kind": "pipeline"})
    assert (status, body) == (202, {"ignored": "Pipeline Hook"})
    body_bytes = json.dumps(gitlab_push()).encode()
    response = await client.post("/webhooks/gitlab", data=body_bytes,
                                 headers={**gitlab_headers("Push Hook"), "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status == 415


async def test_gitlab_redelivery_by_idempotency_key_or_body(client: Client) -> None:
    _, first = await gitlab(client, "Push Hook", gitlab_push(), delivery="uuid-1")
    _, second = await gitlab(client, "Push Hook", gitlab_push(), delivery="uuid-1")
    assert second["pipelines"] == first["pipelines"] and second["redelivery"] is True
    body = json.dumps(gitlab_push(after="f" * 40)).encode()
    headers = gitlab_headers("Push Hook")
    del headers["X-Gitlab-Event-UUID"]  # an old GitLab: the body itself identifies the delivery
    answers = [await (await client.post("/webhooks/gitlab", data=body, headers=headers)).json() for _ in range(2)]
    assert answers[0]["pipelines"] == answers[1]["pipelines"] and answers[1]["redelivery"] is True
    assert answers[0]["superseded_pipelines"] == first["pipelines"]  # a newer push to the branch
    assert planning(client) == 1  # one pipeline each, and the redelivery made none


async def test_each_forge_needs_its_own_secret(shared_dir: Path) -> None:
    client = await open_client(quick_settings(shared_dir), {k: v for k, v in ENV.items() if "GITLAB" not in k})
    try:
        status, error = await gitlab(client, "Push Hook", gitlab_push())
        assert status == 503 and "FORGECI_GITLAB_WEBHOOK_SECRET" in error["detail"]
        status, _ = await gitea(client, "push", gitea_push())
        assert status == 202
    finally:
        await client.close()
