"""Gitea and Forgejo webhooks: hex HMAC-SHA256 signatures, GitHub-shaped payloads, routed like GitHub's."""

from __future__ import annotations

from aiohttp import web
from gidgethub import routing, sansio

from bot.errors import HTTPError
from bot.keys import SETTINGS
from bot.webhooks.github_shaped import plan_pull_request, plan_push
from bot.webhooks.intake import (
    FORM, JSON, check_hmac, decode, delivery_id, dispatch, header, off_loop, read_body, secret_for,
    webhook_view,
)
from bot.webhooks.jobs import Origin, Payload, Plan, instance_origin

FORGE = "gitea"
API_PATH = "/api/v1"  # below the instance's root, which may itself sit below a path
# Gitea spells a push to a pull request's branch "synchronized" (and sends it as pull_request_sync).
BUILD_ACTIONS = frozenset({"opened", "reopened", "synchronized", "ready_for_review"})

pushes = routing.Router()
pulls = routing.Router()


def _origin(payload: Payload, delivery: str) -> Origin:
    full_name = payload.text("repository.full_name")
    return instance_origin(FORGE, full_name, delivery, payload.optional_text("repository.html_url", 500), API_PATH)


@pushes.register("push")
async def on_push(event: sansio.Event, *, plan: Plan) -> None:
    payload = Payload(event.data, "push")
    commits = payload.get("commits")
    message = payload.optional_text("head_commit.message")
    if not message and isinstance(commits, list) and commits and isinstance(commits[0], dict):
        message = Payload(commits[0], "push").optional_text("message")  # Gitea lists the newest commit first
    plan_push(payload, event.delivery_id, plan, _origin, message=message,
              pusher=payload.optional_text("pusher.login", 100) or payload.optional_text("sender.login", 100))


@pulls.register("pull_request")
@pulls.register("pull_request_sync")
async def on_pull_request(event: sansio.Event, *, plan: Plan) -> None:
    plan_pull_request(Payload(event.data, "pull_request"), event.delivery_id, plan, _origin,
                      actions=BUILD_ACTIONS, fork=_fork)


def _fork(payload: Payload) -> bool:
    # Gitea names the two repositories by id; a head without one (its repository was deleted) is a fork.
    head_repo = payload.optional_id("pull_request.head.repo_id") or payload.optional_id("pull_request.head.repo.id")
    base_repo = payload.optional_id("pull_request.base.repo_id") or payload.optional_id("pull_request.base.repo.id")
    return not head_repo or head_repo != base_repo


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

    return await dispatch(request, router, sansio.Event(await off_loop(body, verify_and_decode), event=name,
                                                        delivery_id=delivery), FORGE, delivery, name)
