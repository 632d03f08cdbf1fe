"""The web dashboard: server-rendered pages, an inline SVG chart, live parts over SSE."""

from __future__ import annotations

from bot.dashboard.views import setup_dashboard

__all__ = ["setup_dashboard"]
