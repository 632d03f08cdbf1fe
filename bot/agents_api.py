"""GET /agents: the registry of remote runners (runner/queue/labels.py), and the embedded runner's labels."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from bot.auth import Access, Handler
from bot.keys import RUNTIME, SETTINGS
from bot.parse import check_keys
from runner.queue import Queue


def agents_document(queue: Queue, embedded: bool, labels: tuple[str, ...]) -> dict[str, Any]:
    """The agents (online first, then by name) and the embedded runner: what the API, dashboard and TUI show."""
    found = sorted(queue.agents(), key=lambda agent: (not agent.online, agent.id))
    return {"agents": [agent.to_dict() for agent in found],
            "embedded": {"enabled": embedded, "labels": list(labels)}}


async def list_agents(request: web.Request) -> web.Response:
    """GET /agents: every agent that claimed, its labels, version, address, last claim and running jobs."""
    check_keys(request.query, ())
    runner = request.app[SETTINGS].runner
    doc = await asyncio.to_thread(agents_document, request.app[RUNTIME].queue, runner.embedded, runner.labels)
    return web.json_response(doc)


AGENTS_ROUTES: tuple[tuple[str, str, Handler, Access], ...] = (
    ("GET", "/agents", list_agents, "read"),
)
