"""`forgeci agents [--json]`: the server's remote runners (GET /agents) with their labels and running jobs."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from client.api import Client
from client.errors import BadResponse
from client.exits import EXIT_OK
from client.output import ago, table


async def fetch_agents(client: Client) -> dict[str, Any]:
    """GET /agents, checked: {"agents": [...], "embedded": {...}}."""
    found = await client.request("GET", "/agents")
    agents = found.get("agents") if isinstance(found, dict) else None
    if not isinstance(agents, list) or not all(isinstance(a, dict) and isinstance(a.get("id"), str) for a in agents):
        raise BadResponse("GET /agents: `agents` is not a list of agents", 200)
    return found


def agent_row(agent: dict[str, Any]) -> list[str]:
    """NAME, STATE, LABELS, RUNNING, VERSION, ADDRESS, LAST CLAIM: one agent as the CLI and the TUI show it."""
    running = [str(job) for job in agent.get("running_jobs") or []]
    slots = agent.get("max_concurrent")
    return [str(agent["id"]), "online" if agent.get("online") else "offline",
            ",".join(str(label) for label in agent.get("labels") or []) or "–",
            (", ".join(running) or "–") + (f" ({len(running)}/{slots})" if slots else ""),
            str(agent.get("version") or "–"), str(agent.get("address") or "–"),
            ago(agent["last_seen"]) if isinstance(agent.get("last_seen"), (int, float)) else "–"]


def render(doc: dict[str, Any], out: TextIO) -> None:
    embedded = doc.get("embedded") or {}
    if embedded.get("enabled"):
        labels = ",".join(embedded.get("labels") or []) or "none"
        print(f"embedded runner: on (labels: {labels})", file=out)
    else:
        print("embedded runner: off (runner.embedded = false)", file=out)
    if not doc["agents"]:
        print("no agents yet (forgeci agents token create NAME, then forgeci agent on the runner host)", file=out)
        return
    table([["AGENT", "STATE", "LABELS", "RUNNING", "VERSION", "ADDRESS", "LAST CLAIM"],
           *(agent_row(agent) for agent in doc["agents"])], out)


async def agents(client: Client, as_json: bool, out: TextIO | None = None) -> int:
    doc = await fetch_agents(client)
    stream = out or sys.stdout
    if as_json:
        print(json.dumps(doc, indent=2), file=stream)
    else:
        render(doc, stream)
    return EXIT_OK
