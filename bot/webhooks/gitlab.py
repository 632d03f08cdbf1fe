"""GitLab webhooks: a shared token, Push / Tag Push / Merge Request hooks, routed like GitHub's."""

from __future__ import annotations

import hashlib

from aiohttp import web
from gidgethub import routing, sansio

from bot.errors import HTTPError
from bot.keys import SETTINGS
from bot.webhooks.intake import (
    JSON, check_token, decode, delivery_id, dispatch, header, off_loop, read_body, secret_for, webhook_view,
)
from bot.webhooks.jobs import Origin, Payload, Plan, PullRequest, Push, instance_origin

FORGE = "gitlab"
API_PATH = "/api/v4"  # below the instance's root, which may itself sit below a path
OPENING_ACTIONS = {"open": "opened", "reopen": "reopened"}  # GitLab's action -> the neutral name in meta

pushes = routing.Router()
merges = routing.Router()


def _origin(payload: Payload, delivery: str) -> Origin:
    path = payload.text("project.path_with_namespace")
    project_id = str(payload.integer("project.id"))
    return instance_origin(FORGE, path, delivery, payload.optional_text("project.web_url", 500), API_PATH,
                           project_id=project_id)


@pushes.register("Push Hook")
@pushes.register("Tag Push Hook")
async def on_push(event: sansio.Event, *, plan: Plan) -> None:
    payload = Payload(event.data, "push")
    ref = payload.text("ref")
    after = payload.sha("after")
    if plan.skips_push(ref, after):
        return
    message = ""
    commits = payload.get("commits")
    if isinstance(commits, list):  # oldest first; the head is the one whose id is `after`
        head = [c for c in commits if isinstance(c, dict) and c.get("id") == after]
        message = Payload(head[0], "push").optional_text("message") if head else ""
    plan.push(Push(
        origin=_origin(payload, event.delivery_id), clone_url=payload.text("project.git_http_url"), ref=ref,
        sha=after, pusher=payload.optional_text("user_username", 100) or payload.optional_text("user_name", 100),
        message=message, before=payload.optional_sha("before"),
        default_branch=payload.optional_text("project.default_branch", 255),
    ))


@merges.register("Merge Request Hook")
async def on_merge_request(event: sansio.Event, *, plan: Plan) -> None:
    payload = Payload(event.data, "merge_request")
    action = payload.text("object_attributes.action")
    draft = payload.flag("object_attributes.draft") or payload.flag("object_attributes.work_in_progress")
    new_commits = action == "update" and payload.get("object_attributes.oldrev") is not None
    ready = (action == "update" and payload.get("changes.draft.previous") is True
             and payload.get("changes.draft.current") is False)
    if action not in OPENING_ACTIONS and not new_commits and not ready:
        plan.skip(f"merge_request {action} runs nothing")
        return
    iid = payload.integer("object_attributes.iid")
    source = payload.integer("object_attributes.source_project_id")
    target = payload.integer("object_attributes.target_project_id")
    plan.pull_request(PullRequest(
        origin=_origin(payload, event.delivery_id), clone_url=payload.text("project.git_http_url"), number=iid,
        ref=f"refs/merge-requests/{iid}/head", sha=payload.sha("object_attributes.last_commit.id"),
        base_ref=payload.text("object_attributes.target_branch"), fork=source != target, draft=draft,
        sender=payload.optional_text("user.username", 100), title=payload.optional_text("object_attributes.title"),
        action="synchronize" if new_commits else "ready_for_review" if ready else OPENING_ACTIONS[action],
        message=payload.optional_text("object_attributes.last_commit.message"),
    ))


router = routing.Router(pushes, merges)


@webhook_view
async def receive(request: web.Request) -> web.Response:
    """POST /webhooks/gitlab: a delivery with the right X-Gitlab-Token becomes jobs."""
    settings = request.app[SETTINGS]
    secret = secret_for(request, settings.gitlab.webhook_secret_env, FORGE)
    check_token(secret, header(request, "X-Gitlab-Token"), "X-Gitlab-Token")
    body = await read_body(request, JSON)
    name = header(request, "X-Gitlab-Event")
    if not name:
        raise HTTPError(400, "invalid delivery", "missing X-Gitlab-Event header")
    # Idempotency-Key stays the same across GitLab's retries; older versions only send the event UUID.
    sent = header(request, "Idempotency-Key", "X-Gitlab-Event-UUID")
    delivery = delivery_id(sent, "Idempotency-Key") if sent else "body-" + hashlib.sha256(body).hexdigest()[:32]
    return await dispatch(request, router, sansio.Event(await off_loop(body, lambda: decode(body, JSON)), event=name,
                                                        delivery_id=delivery), FORGE, delivery, name)
