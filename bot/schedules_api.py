"""The schedules' JSON API: GET /schedules (each with its next due time and last pipeline), and
POST /schedules/{name}/run to run one now."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from bot.auth import Access, Handler
from bot.errors import HTTPError
from bot.keys import RUNTIME, SETTINGS
from bot.parse import check_keys, read_json
from config.schedules import ScheduleSpec
from runner.queue import ScheduleRow
from runner.scheduler import Scheduler


def schedule_json(schedule: ScheduleSpec, row: ScheduleRow | None, now: float) -> dict[str, Any]:
    """A schedule as the API shows it; its next due time is the stored one (computed from now before the
    scheduler first stored it, or when the settings changed since)."""
    stored = row is not None and row.fingerprint == schedule.fingerprint()
    last = None
    if row is not None and row.last_pipeline is not None:
        last = {"id": row.last_pipeline, "state": None if row.last_state is None else str(row.last_state),
                "due": row.last_due}
    return {"name": schedule.name, "repo": schedule.repo, "ref": schedule.ref, "cron": schedule.cron,
            "timezone": schedule.timezone, "next_due": row.next_due if stored and row else schedule.next_due(now),
            "last_pipeline": last}


async def list_schedules(request: web.Request) -> web.Response:
    """GET /schedules -> {schedules}: the server's [[schedules]] with their next due time and last pipeline."""
    check_keys(request.query, ())
    rows = {row.name: row for row in await asyncio.to_thread(request.app[RUNTIME].queue.schedules)}
    now = time.time()
    return web.json_response({"schedules": [schedule_json(s, rows.get(s.name), now)
                                            for s in request.app[SETTINGS].schedules]})


async def run_schedule(request: web.Request) -> web.Response:
    """POST /schedules/{name}/run -> 202 {schedule, pipeline}: a pipeline of the schedule now (event `schedule`,
    planned in the background); its due times stay as they are. 404 for a name the settings lack."""
    check_keys(await read_json(request, optional=True), ())
    name = request.match_info["name"]
    runtime = request.app[RUNTIME]
    scheduler = runtime.scheduler or Scheduler(runtime.queue, runtime.control, request.app[SETTINGS])
    if name not in scheduler.schedules:
        raise HTTPError(404, "not found", f"no schedule {name[:100]!r} in the server's settings")
    pipeline_id = await scheduler.run_now(name)
    return web.json_response({"schedule": name, "pipeline": pipeline_id}, status=202,
                             headers={"Location": f"/pipelines/{pipeline_id}"})


SCHEDULE_ROUTES: tuple[tuple[str, str, Handler, Access], ...] = (
    ("GET", "/schedules", list_schedules, "read"),
    ("POST", "/schedules/{name}/run", run_schedule, "write"),
)
