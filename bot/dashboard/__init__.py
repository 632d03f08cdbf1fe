"""The web dashboard: server-rendered pages, an inline SVG chart and job graph, live parts over SSE."""

from __future__ import annotations

from aiohttp import web

from bot.dashboard import pipelines, schedules, submit, usage, views


def setup_dashboard(app: web.Application) -> None:
    """Register every dashboard page (after setup_api: the dashboard shares its access policy)."""
    views.setup_dashboard(app)
    pipelines.add_routes(app.router)
    schedules.add_routes(app.router)
    submit.add_routes(app.router)
    usage.add_routes(app.router)


__all__ = ["setup_dashboard"]
