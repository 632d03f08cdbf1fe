"""Discord: a webhook's execute call with one embed (https://discord.com/developers/docs/resources/webhook,
https://discord.com/developers/docs/resources/message#embed-object, with its documented limits)."""

from __future__ import annotations

import datetime
import json
from typing import Any

import aiohttp

from bot.notify.base import post
from bot.notify.message import Message

COLOURS = {"success": 0x2DA44E, "fixed": 0x2DA44E, "failure": 0xCF222E, "error": 0xBF8700, "cancelled": 0x8C959F}
MAX_TITLE, MAX_DESCRIPTION, MAX_FIELD_NAME, MAX_FIELD, MAX_FIELDS, MAX_TOTAL = 256, 4096, 256, 1024, 25, 6000


def _code(lines: tuple[str, ...], limit: int) -> str:
    """The lines as a code block of at most `limit` characters, keeping the last ones (where it broke)."""
    limit = max(limit, 24)
    body = "\n".join(lines).replace("```", "`\u200b``")
    while body and len(body) + 8 > limit:
        body = body[body.find("\n") + 1:] if "\n" in body else body[len(body) - (limit - 8):]
    return f"```\n{body}\n```" if body else "(no output)"


def payload(message: Message) -> dict[str, Any]:
    """The message's JSON body."""
    fields: list[dict[str, Any]] = [
        {"name": "Repository", "value": message.repo[:200] or "-", "inline": True},
        {"name": "Branch", "value": message.branch[:200] or "-", "inline": True},
        {"name": "Pushed by", "value": message.pusher[:100] or "-", "inline": True},
    ]
    description = f"`{message.short_sha}` {message.commit}" + (f"\n{message.error}" if message.error else "")
    description = description[:MAX_DESCRIPTION // 4]
    failed = message.failed[:MAX_FIELDS - len(fields)]
    # An embed holds 6000 characters in all: the failed jobs' excerpts share what the rest leaves.
    room = MAX_TOTAL - len(message.title[:MAX_TITLE]) - len(description) - 800  # the fields above, the footer
    for job in failed:
        where = f"step {job.step} (exit {job.exit_code})" if job.step else (job.error or job.state)
        name = f"{job.name}: {job.state} at {where}"[:MAX_FIELD_NAME]
        fields.append({"name": name, "value": _code(job.log, min(MAX_FIELD, room // len(failed) - len(name))),
                       "inline": False})
    embed: dict[str, Any] = {
        "title": message.title[:MAX_TITLE], "url": message.url, "description": description,
        "color": COLOURS.get(message.event, 0x8C959F), "fields": fields, "footer": {"text": "forgeci"},
    }
    if message.finished_at is not None:
        embed["timestamp"] = datetime.datetime.fromtimestamp(message.finished_at, datetime.UTC).isoformat()
    return {"username": "forgeci", "embeds": [embed], "allowed_mentions": {"parse": []}}


async def send(session: aiohttp.ClientSession, url: str, message: Message, timeout: float) -> None:
    await post(session, url, json.dumps(payload(message)).encode(), {}, timeout)
