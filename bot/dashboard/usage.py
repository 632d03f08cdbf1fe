"""The dashboard's usage page: minutes per repository (or owner, user) as bars, a daily series as inline SVG, the
quotas' use (used/limit), and the report's table with its CSV."""

from __future__ import annotations

from html import escape
from typing import Any

from aiohttp import web
from markupsafe import Markup

from bot.dashboard.chart import _nice
from bot.dashboard.views import page, viewer
from bot.keys import SETTINGS
from bot.usage import usage_of

WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 960, 180, 44, 24, 12


def daily_svg(days: list[dict[str, Any]]) -> Markup:
    """Minutes per day as an SVG bar series (escaped: safe to insert)."""
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - TOP - BOTTOM
    top = _nice(max((d["minutes"] for d in days), default=0))
    slot = plot_w / max(1, len(days))
    out = [(f'<svg class="chart daily" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
            f'aria-label="Runner minutes per day" xmlns="http://www.w3.org/2000/svg">')]
    for i in range(3):
        y = TOP + plot_h - plot_h * i / 2
        out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{top * i / 2:g}</text>')
    for index, day in enumerate(days):
        h = plot_h * day["minutes"] / top
        x = LEFT + index * slot + slot * 0.14
        out.append(f'<rect class="bar ok day" data-day="{escape(day["day"])}" x="{x:.1f}" y="{TOP + plot_h - h:.1f}" '
                   f'width="{max(1.0, slot * 0.72):.1f}" height="{h:.1f}"><title>{escape(day["day"])}: '
                   f'{day["minutes"]:.1f} min</title></rect>')
        if index % max(1, len(days) // 8) == 0:
            out.append(f'<text class="axis" x="{x:.1f}" y="{HEIGHT - 6}">{escape(day["day"][5:])}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def percent(used: float, limit: int) -> float:
    return 0.0 if not limit else min(100.0, 100.0 * used / limit)


async def usage_page(request: web.Request) -> web.Response:
    """GET /dashboard/usage?by=&month=&from=&to=: a bad value is the API's 400 (JSON)."""
    who = viewer(request)
    doc = await usage_of(request)
    top = max((r["minutes"] for r in doc["rows"]), default=0.0) or 1.0
    query = request.query_string
    return page(request, "usage.html", who, doc=doc, top=top, daily=daily_svg(doc["daily"]), percent=percent,
                csv_link=f"/usage?{query + '&' if query else ''}format=csv",
                costs=request.app[SETTINGS].costs, bys=("repo", "owner", "user"))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/dashboard/usage", usage_page)


__all__ = ["add_routes"]
