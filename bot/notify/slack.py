"""Slack: an incoming webhook's message with Block Kit blocks (https://api.slack.com/messaging/webhooks,
https://api.slack.com/reference/block-kit/blocks) and `text` as the notification fallback."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from bot.notify.base import post
from bot.notify.message import EMOJI, Message, plain_text

MAX_TEXT = 2900  # a section's text may hold 3000 characters
MAX_HEADER = 150


def _code(lines: tuple[str, ...]) -> str:
    text = "\n".join(lines).replace("```", "`\u200b``")
    return f"```{text}```" if text else ""


def payload(message: Message) -> dict[str, Any]:
    """The message's JSON body."""
    title = f"{message.title}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:MAX_HEADER], "emoji": True}},
        {"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*Repository*\n{message.repo}"},
            {"type": "mrkdwn", "text": f"*Branch*\n{message.branch}"},
            {"type": "mrkdwn", "text": f"*Commit*\n`{message.short_sha}` {message.commit}"[:MAX_TEXT]},
            {"type": "mrkdwn", "text": f"*Pushed by*\n{message.pusher or '-'}"},
        ]},
    ]
    if message.error:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Error*: {message.error}"[:MAX_TEXT]}})
    for job in message.failed:
        where = f"step `{job.step}` (exit {job.exit_code})" if job.step else (job.error or job.state)
        text = f"{EMOJI.get(job.state, ':x:')} *<{job.url}|{job.name}>* {job.state} at {where}\n{_code(job.log)}"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text[:MAX_TEXT]}})
    blocks.append({"type": "actions", "elements": [
        {"type": "button", "text": {"type": "plain_text", "text": "Open pipeline"}, "url": message.url}]})
    return {"text": f"{EMOJI.get(message.event, '')} {plain_text(message)}"[:MAX_TEXT], "blocks": blocks}


async def send(session: aiohttp.ClientSession, url: str, message: Message, timeout: float) -> None:
    await post(session, url, json.dumps(payload(message)).encode(), {}, timeout)
