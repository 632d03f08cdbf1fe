"""A generic webhook: the message as JSON, signed `X-Forgeci-Signature: sha256=<hex HMAC-SHA256 of the body>`.

The body is `{"event": ..., "delivery": ..., "pipeline": {...}}` (README, Notifications and badges); the
delivery id stays the same across retries, so a receiver can drop a repeat.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import aiohttp

from bot.notify.base import post
from bot.notify.message import Message

SIGNATURE_HEADER = "X-Forgeci-Signature"


def signature(secret: str, body: bytes) -> str:
    """The header's value: `sha256=` and the hex HMAC-SHA256 of `body` under `secret`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def payload(message: Message, delivery: str) -> dict[str, Any]:
    return {"event": message.event, "delivery": delivery, "pipeline": message.to_dict()}


async def send(session: aiohttp.ClientSession, url: str, secret: str, message: Message, delivery: str,
               timeout: float) -> None:
    body = json.dumps(payload(message, delivery), separators=(",", ":")).encode()
    headers = {SIGNATURE_HEADER: signature(secret, body), "X-Forgeci-Event": message.event,
               "X-Forgeci-Delivery": delivery, "User-Agent": "forgeci"}
    await post(session, url, body, headers, timeout)
