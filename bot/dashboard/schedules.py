"""The dashboard's Schedules section (the overview's card of the server's [[schedules]]) and its Run button."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from bot.dashboard.views import checked_action, page, redirect
from bot.keys import RUNTIME, SETTINGS
from bot.schedules_api import schedule_json
from runner.scheduler import Scheduler


def _until(ts: float | None, now: float) -> str:
    """`03:00 UTC (in 5h)`; "never" for a schedule that is never due again."""
    if ts is None:
        return "never"
    left = ts - now
    when = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
    if left <= 0:
        return f"{when} (due now)"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if left >= size:
            return f"{when} (in {int(left // size)}{unit})"
    return f"{when} (in {int(left)}s)"


async def schedule_views(request: web.Request) -> list[dict[str, Any]]:
    """The schedules as the overview shows them: the API's view, and the next due time in words."""
    settings = request.app[SETTINGS]
    if not settings.schedules:
        return []
    rows = {row.name: row for row in await asyncio.to_thread(request.app[RUNTIME].queue.schedules)}
    now = time.time()
    views = []
    for schedule in settings.schedules:
        view = schedule_json(schedule, rows.get(schedule.name), now)
        views.append({**view, "next_text": _until(view["next_due"], now)})
    return views


async def run_action(request: web.Request) -> web.Response:
    """POST /dashboard/schedules/{name}/run: the schedule's pipeline now; its page next."""
    checked = await checked_action(request)
    if isinstance(checked, web.Response):
        return checked
    name = request.match_info["name"]
    runtime = request.app[RUNTIME]
    scheduler = runtime.scheduler or Scheduler(runtime.queue, runtime.control, request.app[SETTINGS])
    if name not in scheduler.schedules:
        return page(request, "error.html", checked, status=404, title="Schedule not found",
                    message=f"There is no schedule {name[:100]!r} in the server's settings.")
    pipeline_id = await scheduler.run_now(name)
    return redirect(f"/dashboard/pipelines/{pipeline_id}")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/dashboard/schedules/{name}/run", run_action)
