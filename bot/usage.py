"""GET /usage (the usage report, JSON or CSV) and GET /quotas (each [[quotas]] rule's use now)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from bot.auth import Access, Handler
from bot.keys import RUNTIME, SETTINGS
from bot.parse import bad, check_keys
from runner.queue.usage import By
from runner.usage_report import BYS, Range, report_range, usage_csv, usage_document


def report_query(request: web.Request) -> tuple[By, Range, str]:
    """(by, range, format) from the query string; a bad value is a 400 naming it."""
    query = request.query
    check_keys(query, (), ("by", "from", "to", "month", "format"))
    by = query.get("by", "repo")
    if by not in BYS:
        raise bad("by", f"expected one of {', '.join(BYS)}, got {by!r}")
    form = query.get("format", "json")
    if form not in ("json", "csv"):
        raise bad("format", f"expected json or csv, got {form!r}")
    try:
        span = report_range(request.app[RUNTIME].queue._clock(), month=query.get("month"), since=query.get("from"),
                            until=query.get("to"))
    except ValueError as exc:
        key, _, message = str(exc).partition(": ")
        raise bad(key, message) from None
    return by, span, form  # type: ignore[return-value]


async def usage_of(request: web.Request) -> dict[str, Any]:
    by, span, _ = report_query(request)
    return await asyncio.to_thread(usage_document, request.app[RUNTIME].queue, by, span, request.app[SETTINGS].costs)


async def usage(request: web.Request) -> web.Response:
    """GET /usage?by=owner|repo|user&from=&to=&month=&format=json|csv."""
    _, _, form = report_query(request)
    doc = await usage_of(request)
    if form == "csv":
        name = f"forgeci-usage-{doc['by']}-{doc['from']}-{doc['to']}.csv"
        return web.Response(text=usage_csv(doc), content_type="text/csv",
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})
    return web.json_response(doc)


async def quotas(request: web.Request) -> web.Response:
    """GET /quotas: each rule's limits and use now (used/limit; 0 = no limit)."""
    check_keys(request.query, ())
    found = await asyncio.to_thread(request.app[RUNTIME].queue.quota_use)
    return web.json_response({"quotas": [use.to_dict() for use in found]})


USAGE_ROUTES: tuple[tuple[str, str, Handler, Access], ...] = (
    ("GET", "/usage", usage, "read"),
    ("GET", "/quotas", quotas, "read"),
)
