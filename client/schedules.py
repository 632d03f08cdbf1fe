"""The server's cron schedules over the HTTP API (`GET /schedules`, `POST /schedules/{name}/run`) and the CLI's
`forgeci schedules`."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from client.api import Client
from client.errors import BadResponse
from client.exits import EXIT_OK
from client.output import table


@dataclass(frozen=True)
class ScheduleInfo:
    """One schedule as the server shows it."""

    name: str
    repo: str
    ref: str
    cron: str
    timezone: str
    next_due: float | None
    last_pipeline: int | None
    last_state: str | None
    raw: dict[str, Any]

    @classmethod
    def from_dict(cls, d: Any) -> ScheduleInfo:
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            raise BadResponse("a schedule without a name")
        last = d.get("last_pipeline") if isinstance(d.get("last_pipeline"), dict) else {}
        due = d.get("next_due")
        return cls(d["name"], str(d.get("repo", "")), str(d.get("ref", "")), str(d.get("cron", "")),
                   str(d.get("timezone", "")), float(due) if isinstance(due, (int, float)) else None,
                   last.get("id") if isinstance(last.get("id"), int) else None,
                   last.get("state") if isinstance(last.get("state"), str) else None, d)


async def list_schedules(client: Client) -> list[ScheduleInfo]:
    answer = await client.request("GET", "/schedules")
    if not isinstance(answer, dict) or not isinstance(answer.get("schedules"), list):
        raise BadResponse("unexpected answer from the server: no schedules")
    return [ScheduleInfo.from_dict(item) for item in answer["schedules"]]


async def run_schedule(client: Client, name: str) -> int:
    """Run schedule `name` now; its pipeline's id."""
    answer = await client.request("POST", f"/schedules/{quote(name, safe='')}/run")
    if not isinstance(answer, dict) or not isinstance(answer.get("pipeline"), int):
        raise BadResponse("unexpected answer from the server: no pipeline")
    return int(answer["pipeline"])


def _in(ts: float | None) -> str:
    if ts is None:
        return "never"
    delta = ts - time.time()
    if delta <= 0:
        return "now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"in {int(delta // size)}{unit}"
    return f"in {int(delta)}s"


async def schedules(client: Client, run: str | None, as_json: bool) -> int:
    """`forgeci schedules [--run NAME] [--json]`: each schedule's cron, next due time and last pipeline."""
    if run is not None:
        pipeline_id = await run_schedule(client, run)
        print(f"schedule {run}: pipeline {pipeline_id} started: {client.server}/dashboard/pipelines/{pipeline_id}")
        return EXIT_OK
    found = await list_schedules(client)
    if as_json:
        print(json.dumps([s.raw for s in found], indent=2))
        return EXIT_OK
    if not found:
        print("no schedules (add [[schedules]] to the server's forgeci.toml)", file=sys.stderr)
        return EXIT_OK
    rows = [["NAME", "CRON", "TZ", "NEXT", "LAST", "REPO", "REF"]]
    for s in found:
        last = f"{s.last_pipeline} {s.last_state or '?'}" if s.last_pipeline is not None else "–"
        rows.append([s.name, s.cron, s.timezone, _in(s.next_due), last, s.repo, s.ref])
    table(rows, sys.stdout)
    return EXIT_OK

