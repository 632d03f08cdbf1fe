"""The notifier's lifetime in the app, and the badge route (under the API's read access)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from bot.auth import guard
from bot.keys import AUTH, ENVIRON, RUNTIME, SETTINGS
from bot.notify.badge import badge
from bot.notify.delivery import Notifier, prometheus
from runner.cluster import NOTIFY, singleton_service

NOTIFIER = web.AppKey("notifier", Notifier)
BADGE_ROUTE = "/badge/{owner}/{name:[^/]+}.svg"


async def notify_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx entry: deliver the outbox from startup (what a previous run left too) to shutdown; with several
    coordinators on PostgreSQL, on the one holding the `notify` singleton (each message is sent by one process)."""
    runtime = app[RUNTIME]
    notifier = Notifier(runtime.queue, runtime.layout, runtime.events, app[SETTINGS], app[ENVIRON])
    app[NOTIFIER] = notifier
    async with singleton_service(runtime.cluster, NOTIFY, notifier.start, notifier.stop):
        yield


def setup_notify(app: web.Application) -> None:
    """The badge route; after setup_api (it shares the API's access policy)."""
    app.router.add_get(BADGE_ROUTE, guard(app[AUTH], "read", badge))


async def notification_metrics(app: web.Application) -> tuple[str, dict[str, dict[str, int]]]:
    """The outbox's counts for /metrics: Prometheus text, and JSON `{kind: {state: count}}`."""
    counts = await asyncio.to_thread(app[RUNTIME].queue.notification_counts)
    by_kind: dict[str, dict[str, int]] = {}
    for (kind, state), count in counts.items():
        by_kind.setdefault(kind, {})[state] = count
    return prometheus(counts), by_kind
