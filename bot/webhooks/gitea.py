"""Gitea and Forgejo webhooks: hex HMAC-SHA256 signatures, GitHub-shaped payloads, routed like GitHub's."""

from __future__ import annotations

from aiohttp import web
from gidgethub import routing, sansio

from bot.errors import HTTPError
from bot.keys import SETTINGS
from bot.webhooks.intake import (
    FORM, JSON, check_hmac, commit, decode, delivery_id, header, ignored, off_loop, read_body,
    secret_for, webhook_view,
)
from bot.webhooks.jobs import Origin, Payload, Plan, PullRequest, Push, is_deletion

FORGE = "gitea"
# Gitea spells a push to a pull request's branch "synchronized" (and sends it as pull_request_sync).
BUILD_ACTIONS = frozenset({"opened", "reopened", "synchronized", "ready_for_review"})

pushes = routing.Router()
pulls = routing.Router()


def api_url_of(html_url: str, full_name: str) -> str:
    """The API root of the instance a repository page lives on (`https://host/sub/o/r` -> `https://host/sub/api/v1`)."""
    base = html_url.rstrip("/")
    return base.removesuffix("/" + full_name) + "/api/v1" if base.endswith("/" + full_name) else ""


def _origin(payload: Payload, delivery: str) -> Origin:
    full_name = payload.text("repository.full_name")
    return Origin(FORGE, full_name, delivery,
                  {"api_url": api_url_of(payload.optional_text("repository.html_url", 500), full_name)})


@pushes.register("push")
async def on_push(event: sansio.Event, *, plan: Plan) -> None:
    payload = Payload(event.data, "push")
    ref = payload.text("ref")
    after = payload.sha("after")
    if is_deletion(after):
        plan.skip(f"{ref} was deleted")
        return
    if not ref.startswith(("refs/heads/", "refs/tags/")):
        plan.skip(f"a push to {ref} runs nothing")
        return
    commits = payload.get("commits")
    message = payload.optional_text("head_commit.message")
    if not message and isinstance(commits, list) and commits and isinstance(commits[0], dict):
        message = Payload(commits[0], "push").optional_text("message")  # Gitea lists the newest commit first
    plan.push(Push(
        origin=_origin(payload, event.delivery_id), clone_url=payload.text("repository.clone_url"), ref=ref,
        sha=after, pusher=payload.optional_text("pusher.login", 100) or payload.optional_text("sender.login", 100),
        message=message,
    ))


@pulls.register("pull_request")
@pulls.register("pull_request_sync")
async def on_pull_request(event: sansio.Event, *, plan: Plan) -> None:
    payload = Payload(event.data, "pull_request")
    action = payload.text("action")
    if action not in BUILD_ACTIONS:
        plan.skip(f"pull_request {action} runs nothing")
        return
    number = payload.integer("pull_request.number")
    head_repo = payload.optional_id("pull_request.head.repo_id") or payload.optional_id("pull_request.head.repo.id")
    base_repo = payload.optional_id("pull_request.base.repo_id") or payload.optional_id("pull_request.base.repo.id")
    plan.pull_request(PullRequest(
        origin=_origin(payload, event.delivery_id), clone_url=payload.text("repository.clone_url"), number=number,
        ref=f"refs/pull/{number}/head", sha=payload.sha("pull_request.head.sha"),
        base_ref=payload.text("pull_request.base.ref"), fork=not head_repo or head_repo != base_repo,
        draft=payload.flag("pull_request.draft"), sender=payload.optional_text("sender.login", 100),
        title=payload.optional_text("pull_request.title"), action=action,
    ))


router = routing.Router(pushes, pulls)


@webhook_view
async def receive(request: web.Request) -> web.Response:
    """POST /webhooks/gitea: Gitea's or Forgejo's delivery, verified by its hex HMAC, becomes jobs."""
    settings = request.app[SETTINGS]
    secret = secret_for(request, settings.gitea.webhook_secret_env, FORGE)
    body = await read_body(request, JSON, FORM)
    name = header(request, "X-Forgejo-Event", "X-Gitea-Event")
    if not name:
        raise HTTPError(400, "invalid delivery", "missing X-Gitea-Event (or X-Forgejo-Event) header")
    delivery = delivery_id(header(request, "X-Forgejo-Delivery", "X-Gitea-Delivery"), "X-Gitea-Delivery")
    signature = header(request, "X-Forgejo-Signature", "X-Gitea-Signature")

    def verify_and_decode() -> object:
        check_hmac(secret, body, signature, "X-Gitea-Signature")
        return decode(body, request.content_type)

    event = sansio.Event(await off_loop(body, verify_and_decode), event=name, delivery_id=delivery)
    if not router.fetch(event):
        return ignored(name)
    plan = Plan(settings)
    await router.dispatch(event, plan=plan)
    return await commit(request, FORGE, delivery, name, plan)
