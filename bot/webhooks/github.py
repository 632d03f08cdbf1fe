"""GitHub webhooks: gidgethub verifies and parses them; one Router per event family, merged in one place."""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web
from gidgethub import BadRequest, ValidationFailure, routing, sansio

from bot.errors import HTTPError
from bot.keys import SETTINGS
from bot.webhooks.github_shaped import plan_pull_request, plan_push
from bot.webhooks.intake import (
    FORM, JSON, check_hmac, decode, delivery_id, dispatch, header, off_loop, read_body, secret_for, webhook_view,
)
from bot.webhooks.jobs import Origin, Payload, Plan

FORGE = "github"
# The actions that put new code in front of reviewers; labeled, edited, closed, converted_to_draft... do not.
BUILD_ACTIONS = frozenset({"opened", "synchronize", "reopened", "ready_for_review"})

pings = routing.Router()
pushes = routing.Router()
pulls = routing.Router()


def _origin(payload: Payload, delivery: str) -> Origin:
    # An App's deliveries name their installation: its token is what statuses are posted with.
    return Origin(FORGE, payload.text("repository.full_name"), delivery,
                  {"installation_id": payload.optional_id("installation.id")})


@pings.register("ping")
async def on_ping(event: sansio.Event, *, plan: Plan) -> None:
    plan.pong = True


@pushes.register("push")
async def on_push(event: sansio.Event, *, plan: Plan) -> None:
    payload = Payload(event.data, "push")
    plan_push(payload, event.delivery_id, plan, _origin, deleted=payload.flag("deleted"),
              pusher=payload.optional_text("pusher.name", 100) or payload.optional_text("sender.login", 100),
              message=payload.optional_text("head_commit.message"))


@pulls.register("pull_request")
async def on_pull_request(event: sansio.Event, *, plan: Plan) -> None:
    plan_pull_request(Payload(event.data, "pull_request"), event.delivery_id, plan, _origin,
                      actions=BUILD_ACTIONS, fork=_fork)


def _fork(payload: Payload) -> bool:
    base_repo = payload.text("pull_request.base.repo.full_name")
    # A deleted fork leaves head.repo null: still a fork, and never trusted with secrets.
    return payload.optional_text("pull_request.head.repo.full_name", 200) != base_repo


router = routing.Router(pings, pushes, pulls)


def _parse(headers: Mapping[str, str], body: bytes, secret: str) -> sansio.Event:
    """The HMAC-SHA256 check and the JSON (or form) decoding, then gidgethub's Event. A content type with
    parameters other than a UTF-8 charset goes through gidgethub's own from_http (its email-module content-type
    parsing cost a third of a delivery's time; the bytes checked and the errors are the same)."""
    content_type = headers.get("Content-Type", "")
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() in (JSON, FORM) and params.strip().lower().replace('"', "") in ("", "charset=utf-8"):
        check_hmac(secret, body, headers.get("X-Hub-Signature-256", ""), "X-Hub-Signature-256")
        return sansio.Event(decode(body, kind.strip().lower()), event=headers.get("X-GitHub-Event", ""),
                            delivery_id=headers.get("X-GitHub-Delivery", ""))
    return _parse_slowly(headers, body, secret)


def _parse_slowly(headers: Mapping[str, str], body: bytes, secret: str) -> sansio.Event:
    """gidgethub's verification and decoding, with its errors turned into ours (401, 400)."""
    try:
        return sansio.Event.from_http(headers, body, secret=secret)
    except ValidationFailure as exc:
        raise HTTPError(401, "invalid signature", str(exc)) from None
    except BadRequest as exc:
        raise HTTPError(400, "invalid delivery", _why(exc.__cause__)) from None
    except RecursionError:
        raise HTTPError(400, "invalid delivery", "JSON nested too deeply") from None
    except LookupError as exc:  # an unknown charset in the content type
        raise HTTPError(400, "invalid delivery", f"cannot decode the body: {exc}") from None


def _why(cause: BaseException | None) -> str:
    if isinstance(cause, KeyError):
        return "form body without a payload field"
    if isinstance(cause, UnicodeDecodeError):
        return f"body is not UTF-8 (bad byte at offset {cause.start})"
    if isinstance(cause, json.JSONDecodeError):
        return f"body is not JSON: {cause}"
    return f"cannot decode the body: {cause}"


@webhook_view
async def receive(request: web.Request) -> web.Response:
    """POST /webhooks/github: a verified delivery becomes jobs (202 with their ids once committed)."""
    settings = request.app[SETTINGS]
    secret = secret_for(request, settings.github.webhook_secret_env, FORGE)
    body = await read_body(request, JSON, FORM)
    name = header(request, "X-GitHub-Event")
    if not name:
        raise HTTPError(400, "invalid delivery", "missing X-GitHub-Event header")
    delivery = delivery_id(header(request, "X-GitHub-Delivery"), "X-GitHub-Delivery")
    if not header(request, "X-Hub-Signature-256"):
        raise HTTPError(401, "invalid signature", "missing X-Hub-Signature-256 header")
    if not header(request, "X-Hub-Signature-256").isascii():  # gidgethub's compare_digest raises on other text
        raise HTTPError(401, "invalid signature", "X-Hub-Signature-256 does not match the body")
    return await dispatch(request, router, await off_loop(body, lambda: _parse(request.headers, body, secret)),
                          FORGE, delivery, name)
