"""What every forge adapter shares: bounded body reads, secrets, JSON decoding, routing, and the committed 202."""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from gidgethub import routing, sansio

from bot.errors import HTTPError, PayloadError, json_error
from bot.keys import ENVIRON, RUNTIME, SETTINGS
from bot.webhooks.jobs import Plan
from config.settings import env_value

MAX_BODY = 25 * 1024 * 1024  # GitHub caps deliveries at 25 MB; nothing legitimate is larger
OFFLOAD_BYTES = 256 * 1024  # verify and parse bodies larger than this in a thread, off the event loop
HASH_PIECE = 2047  # under hashlib's HASHLIB_GIL_MINSIZE (2048): hashed holding the GIL (body_hmac)
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
_DELIVERY_ID = re.compile(r"[\x21-\x7e]{1,200}")  # printable ASCII: GUIDs, UUIDs, hashes

View = Callable[[web.Request], Awaitable[web.StreamResponse]]


def webhook_view(view: View) -> View:
    """Turn the adapter's refusals into JSON errors at the view boundary (the app's middleware does the rest)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await view(request)
        except HTTPError as exc:  # a delivery refused on purpose: 401 signature, 400 body, 413, 415, 503
            response = json_error(exc.status, exc.error, exc.detail)
            if exc.status == 413:
                response.force_close()  # the unread rest of the body is not worth keeping the connection for
            return response
        except PayloadError as exc:
            return json_error(400, "invalid delivery", str(exc))

    wrapped.__name__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return wrapped


async def dispatch(request: web.Request, router: routing.Router, event: sansio.Event, forge: str, delivery: str,
                   name: str) -> web.Response:
    """Hand a verified delivery's event to the adapter's handlers, then commit the jobs they planned.

    `delivery` and `name` are the adapter's checked reading of the headers, which the answer and the
    queue record; the router matches on the event as parsed. The adapters pass the event without keeping it,
    so the parsed body (hundreds of objects) is gone before the commit is awaited: under load dozens of
    deliveries wait for theirs at once, and the garbage collector would walk every one of their bodies.
    """
    if not router.fetch(event):
        return ignored(name)
    plan = Plan(request.app[SETTINGS])
    await router.dispatch(event, plan=plan)
    del event
    return await commit(request, forge, delivery, name, plan)


def secret_for(request: web.Request, env_name: str, forge: str) -> str:
    """The forge's webhook secret from the server's environment; without one, deliveries cannot be trusted."""
    secret = env_value(env_name, request.app[ENVIRON])
    if secret is None:
        raise HTTPError(503, f"{forge} webhooks are not configured",
                            f"set the environment variable {env_name} to the webhook's secret")
    return secret


async def read_body(request: web.Request, *types: str) -> bytes:
    """The raw body, refusing other content types (415) and bodies over MAX_BODY (413) before reading them."""
    if request.content_type not in types:
        raise HTTPError(415, "unsupported media type",
                            f"expected {' or '.join(types)}, got {request.content_type or 'none'}")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise HTTPError(413, "request body too large", f"the limit is {MAX_BODY} bytes")
    try:
        return await request.read()  # the app's client_max_size stops a chunked body at the same limit
    except web.HTTPRequestEntityTooLarge:
        raise HTTPError(413, "request body too large", f"the limit is {MAX_BODY} bytes") from None


def header(request: web.Request, *names: str) -> str:
    """The first of `names` the request carries, stripped ("" when none)."""
    for name in names:
        value = request.headers.get(name)
        if value is not None:
            return value.strip()
    return ""


def delivery_id(value: str, name: str) -> str:
    if not _DELIVERY_ID.fullmatch(value):
        raise HTTPError(400, "invalid delivery", f"missing or malformed {name} header")
    return value


def check_hmac(secret: str, body: bytes, signature: str, name: str) -> None:
    """A hex HMAC-SHA256 of the body (Gitea, Forgejo), compared in constant time."""
    if not signature:
        raise HTTPError(401, "invalid signature", f"missing {name} header")
    expected = body_hmac(secret.encode(), body)
    given = signature.lower().removeprefix("sha256=").encode("utf-8", "surrogateescape")  # bytes: any header text
    if not hmac.compare_digest(expected.encode(), given):
        raise HTTPError(401, "invalid signature", f"{name} does not match the body")


def body_hmac(key: bytes, body: bytes) -> str:
    """The hex HMAC-SHA256 of a body. hashlib hashes 2 KiB or more with the GIL released, which on the event loop
    hands the GIL to whichever thread waits for it (the delivery committer, between two SQLite calls) and then
    waits to get it back: a body off_loop keeps on the loop is fed in pieces under that size instead."""
    if len(body) > OFFLOAD_BYTES:  # hashed in a worker thread, where releasing the GIL is the point
        return hmac.digest(key, body, "sha256").hex()
    mac = hmac.new(key, digestmod="sha256")
    view = memoryview(body)
    for start in range(0, len(view), HASH_PIECE):
        mac.update(view[start:start + HASH_PIECE])
    return mac.hexdigest()


def check_token(secret: str, token: str, name: str) -> None:
    """A shared token (GitLab), compared in constant time."""
    if not token:
        raise HTTPError(401, "invalid token", f"missing {name} header")
    if not hmac.compare_digest(secret.encode(), token.encode("utf-8", "surrogateescape")):  # any header text
        raise HTTPError(401, "invalid token", f"{name} does not match")


def decode(body: bytes, content_type: str) -> Any:
    """JSON from the body, or from the form field `payload`; HTTPError (400) naming what is wrong.

    orjson reads the JSON bodies it accepts (a 9 KB push in 12 µs; json.loads takes 53, most of a delivery's
    parsing). A body it refuses takes the stdlib's path, as every body did before: that accepts what it always
    did (lone surrogates, NaN) and words the errors as before. One difference: an integer beyond 64 bits,
    which no forge sends, reads as a float (Payload's integer checks then refuse it, 400)."""
    if content_type == JSON:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    try:
        text = body.decode("utf-8")
        if content_type == FORM:
            fields = urllib.parse.parse_qs(text)
            if "payload" not in fields:
                raise HTTPError(400, "invalid delivery", "form body without a payload field")
            text = fields["payload"][0]
        return json.loads(text)
    except UnicodeDecodeError as exc:
        raise HTTPError(400, "invalid delivery", f"body is not UTF-8 (bad byte at offset {exc.start})") from None
    except RecursionError:
        raise HTTPError(400, "invalid delivery", "JSON nested too deeply") from None
    except ValueError as exc:
        raise HTTPError(400, "invalid delivery", f"body is not JSON: {exc}") from None


async def off_loop(body: bytes, work: Callable[[], Any]) -> Any:
    """Run CPU work on a body (HMAC, JSON) in a thread when the body is large, inline when small."""
    if len(body) > OFFLOAD_BYTES:
        return await asyncio.to_thread(work)
    return work()


async def commit(request: web.Request, forge: str, delivery: str, event: str, plan: Plan) -> web.Response:
    """Record the delivery with its pipelines, in one transaction; answer only once it committed. The pipelines'
    jobs come from planning, which reads the repository's file: never on this path (a redelivery lists them)."""
    if plan.pong:
        return web.json_response({"pong": True, "delivery": delivery})
    if not plan.specs:
        return web.json_response({"pipelines": [], "jobs": [], "delivery": delivery,
                                  "reason": plan.reason or f"{event}: no job"}, status=202)
    supersede = plan.supersede and request.app[SETTINGS].queue.cancel_superseded
    result = await request.app[RUNTIME].control.commit_delivery(forge, delivery, plan.specs, supersede=supersede)
    body: dict[str, Any] = {"pipelines": list(result.pipeline_ids), "jobs": list(result.job_ids),
                            "delivery": delivery}
    if result.redelivery:
        body["redelivery"] = True
    if result.superseded:
        body["superseded_pipelines"] = list(result.superseded)
    if result.cancelled or result.stopping:
        body["superseded"] = sorted(result.cancelled + result.stopping)
    # Ids and the checked (ASCII) delivery id only: orjson, a tenth of json.dumps's time, cannot fail here.
    return web.Response(body=orjson.dumps(body), status=202, content_type=JSON, charset="utf-8")


def ignored(event: str) -> web.Response:
    return web.json_response({"ignored": event[:100]}, status=202)
