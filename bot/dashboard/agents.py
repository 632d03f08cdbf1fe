"""The dashboard's Agents section (the overview's card of GET /agents): each remote runner's labels, state and jobs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from bot.agents_api import agents_document
from bot.keys import RUNTIME, SETTINGS


def _ago(ts: float, now: float) -> str:
    delta = max(0.0, now - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{int(delta // size)}{unit} ago"
    return f"{int(delta)}s ago"


async def agent_views(request: web.Request) -> dict[str, Any] | None:
    """GET /agents's document with `last_text` per agent; None (no card) while no agent ever claimed and the
    embedded runner runs everything."""
    runner = request.app[SETTINGS].runner
    doc = await asyncio.to_thread(agents_document, request.app[RUNTIME].queue, runner.embedded, runner.labels)
    if not doc["agents"] and runner.embedded:
        return None
    now = time.time()
    for agent in doc["agents"]:
        agent["last_text"] = _ago(agent["last_seen"], now)
    return doc
