"""The aiohttp application factory: settings in, an app with the runner, routes and error handling out."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator, Mapping

from aiohttp import web

from bot.agent_api import setup_agent_api
from bot.api import setup_api
from bot.artifacts import setup_artifacts
from bot.dashboard import setup_dashboard
from bot.errors import error_middleware
from bot.keys import ENVIRON, RUNTIME, SETTINGS
from bot.notify.setup import notify_ctx, setup_notify
from bot.status.setup import status_ctx
from bot.webhooks import setup_webhooks
from config.settings import Settings
from runner.engine import Engine
from runner.runtime import open_runtime

MAX_BODY = 25 * 1024 * 1024  # GitHub caps webhook payloads at 25 MB


async def healthz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    engine_ok = await runtime.engine.alive()
    store = await asyncio.to_thread(runtime.store.health)  # cached for a few seconds: cheap to poll
    queued, running = await asyncio.to_thread(runtime.queue.active_counts)
    body = {"status": "ok" if engine_ok and store.ok else "degraded", "engine": engine_ok, "store": store.to_dict(),
            "queued": queued, "running": running}
    # Only the engine makes it 503: without the store, jobs still run (no caches or snapshots).
    return web.json_response(body, status=200 if engine_ok else 503)


async def frozen_heap_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx entry: what start-up made (modules, settings, the runtime) lives as long as the server, so it
    goes to the collector's permanent generation; a full collection no longer walks it (under webhook load one
    took about 0.1 s every few thousand deliveries). Thawed at shutdown, so an app in a test process leaks nothing."""
    gc.freeze()
    yield
    gc.unfreeze()


def create_app(
    settings: Settings, environ: Mapping[str, str] | None = None, *, workers: bool = True,
    engine: Engine | None = None,
) -> web.Application:
    """The whole server: the runtime (queue, engine, workers) lives and dies with the app.

    With `workers`, the app is the data dir's coordinator: it holds its lock (InstanceLocked at start-up when
    another server does) and runs the embedded worker pool. `engine` defaults to rootless Podman.
    """
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY)
    app[SETTINGS] = settings
    app[ENVIRON] = dict(os.environ if environ is None else environ)

    async def runtime_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_runtime(settings, app[ENVIRON], workers=False, exclusive=workers, engine=engine) as runtime:
            app[RUNTIME] = runtime
            yield

    async def workers_ctx(app: web.Application) -> AsyncIterator[None]:
        # Last in, first out: workers start after the status reporter subscribed, so it sees the start-up
        # reap's requeues too, and they stop before it drains.
        if workers:
            await app[RUNTIME].start_workers()
        yield
        await app[RUNTIME].stop_workers()

    app.cleanup_ctx.append(runtime_ctx)
    app.cleanup_ctx.append(status_ctx)  # after the runtime: the reporter follows its events and reads its queue
    app.cleanup_ctx.append(notify_ctx)  # the notifications outbox (bot.notify), delivered from start-up on
    app.cleanup_ctx.append(workers_ctx)
    app.cleanup_ctx.append(frozen_heap_ctx)  # last: once everything above has started
    setup_agent_api(app)  # /agent/v1/: remote runners (after the runtime: it follows its events)
    app.router.add_get("/healthz", healthz)
    setup_webhooks(app)
    setup_api(app)  # the JSON API and its access policy (bot.auth)
    setup_notify(app)  # GET /badge/{owner}/{repo}.svg (after setup_api: its access policy)
    setup_artifacts(app)  # GET /artifacts and the signed download links (after setup_api: its access policy)
    setup_dashboard(app)  # after setup_api: the dashboard shares its access policy
    return app
