"""Request parsing shared by the API's views: JSON bodies, known keys, ids, limits; every problem a 4xx."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from bot.errors import HTTPError
from config.errors import ConfigError, ConfigIssue

MAX_JSON_BODY = 1024 * 1024  # an API request is a few hundred bytes; webhooks have their own, larger limit
MAX_ID = 2**63 - 1  # SQLite's integer range: larger ids cannot exist, and must not reach the driver


def bad(key: str, message: str) -> ConfigError:
    return ConfigError(ConfigIssue("request", key, message))


async def read_json(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object body: 413 when too large, 415 when not JSON, 400 when not an object."""
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise HTTPError(413, "request body too large", f"at most {MAX_JSON_BODY} bytes")
    data = bytearray()
    async for chunk in request.content.iter_any():
        data += chunk
        if len(data) > MAX_JSON_BODY:
            raise HTTPError(413, "request body too large", f"at most {MAX_JSON_BODY} bytes")
    if not data and optional:
        return {}
    if request.content_type != "application/json":
        raise HTTPError(415, "unsupported media type", "send the body as application/json")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise bad("", f"invalid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad("", f"expected a JSON object, got {type(body).__name__}")
    return body


def check_keys(body: Mapping[str, Any], required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    issues = [ConfigIssue("request", key, "unknown key") for key in body if key not in required + optional]
    issues += [ConfigIssue("request", key, "missing") for key in required if key not in body]
    if issues:
        raise ConfigError(issues)


def integral(value: object) -> object:
    """JSON has one number type: 3.0 is the integer 3 (as JSON Schema says), 3.5 and "3" are not integers."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_ID:
        return int(value)
    return value


def job_id_of(value: object, key: str = "id", what: str = "job") -> int:
    """A job (or pipeline) id from JSON: an integer (not a bool, not a string of digits) in SQLite's range."""
    value = integral(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise bad(key, f"expected a {what} id (a positive integer), got {value!r}")
    return value


def id_of_text(text: str, key: str = "id", what: str = "job") -> int:
    """An id from a query string or a path: digits only."""
    return job_id_of(int(text) if text.isascii() and text.isdigit() and len(text) <= 19 else text, key, what)


def query_id(request: web.Request, what: str = "job") -> int:
    if "id" not in request.query:
        raise bad("id", "missing")
    return id_of_text(request.query["id"], what=what)


def query_limit(request: web.Request, default: str = "50") -> int:
    """`limit` of a listing: 1..1000 (the queue checks the range; this refuses what is not a number)."""
    text = request.query.get("limit", default)
    if not (text.isascii() and text.isdigit()) or len(text) > 6:
        raise bad("limit", f"expected an integer 1..1000, got {text!r}")
    return int(text)


def boolean(body: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise bad(key, f"expected true or false, got {value!r}")
    return value
