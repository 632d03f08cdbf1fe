"""Every error of the server layer (HTTP, webhook payloads, commit statuses) and the middleware that turns every
exception into a JSON error (never a traceback)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from config.errors import ConfigError, ForgeciError
from runner.errors import (
    EngineError,
    InvalidTransition,
    JobNotFound,
    PipelineNotFound,
    QueueError,
    QuotaExceeded,
    StoreError,
)

log = logging.getLogger(__name__)


class HTTPError(ForgeciError):
    """An error a view raises on purpose, with its status and a JSON detail: a bad API call, a refused webhook
    delivery (bad signature, body, size or type; a forge not configured), a missing token."""

    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail


class PayloadError(ForgeciError):
    """A delivery's body lacks what its event needs (answered 400, naming it)."""

    def __init__(self, event: str, path: str, expected: str) -> None:
        super().__init__(f"{event}: {path}: {expected}")
        self.event = event
        self.path = path
        self.expected = expected


class StatusError(ForgeciError):
    """A status post failed. `retryable` for server errors, network faults and rate limits; `retry_at` is
    the wall-clock time the forge asked us to wait for (Retry-After, X-RateLimit-Reset), if it said."""

    def __init__(self, message: str, *, retryable: bool, retry_at: float | None = None,
                 rate_limited: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_at = retry_at
        self.rate_limited = rate_limited


def json_error(status: int, error: str, detail: Any = None) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


def _status_of(exc: Exception) -> tuple[int, str, Any]:
    if isinstance(exc, HTTPError):
        return exc.status, exc.error, exc.detail
    if isinstance(exc, ConfigError):
        return 400, "invalid input", [str(issue) for issue in exc.issues]
    if isinstance(exc, JobNotFound | PipelineNotFound):  # before QueueError, their base (503)
        return 404, "not found", str(exc)
    if isinstance(exc, InvalidTransition):
        return 409, "wrong state", str(exc)
    if isinstance(exc, QuotaExceeded):
        return 429, "quota exceeded", str(exc)
    if isinstance(exc, EngineError):
        return 503, "container engine unavailable", str(exc)
    if isinstance(exc, QueueError):  # the database is locked for too long, unreadable or full: try again later
        return 503, "queue unavailable", str(exc)
    if isinstance(exc, StoreError):  # the object store (S3, MinIO) is down or refuses us: try again later
        return 503, "store unavailable", str(exc)
    return 500, "internal error", None


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = {413: "request body too large", 415: "unsupported media type"}.get(exc.status, exc.reason)
        response = json_error(exc.status, reason)
        if "Allow" in exc.headers:  # a 405 must say which methods the resource has (RFC 9110)
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception as exc:
        status, error, detail = _status_of(exc)
        if status == 500:
            log.exception("unhandled error in %s %s", request.method, request.path)
        return json_error(status, error, detail)
