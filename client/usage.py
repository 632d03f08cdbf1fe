"""`forgeci usage [--by owner|repo|user] [--month 2026-12] [--csv]`: the server's usage report, and its quotas' use."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import httpx

from client.api import Client, _raise_for
from client.errors import BadResponse, ClientError, ServerUnreachable
from client.exits import EXIT_OK


def size_text(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


async def fetch(client: Client, params: Mapping[str, str], *, csv: bool) -> Any:
    """The report as JSON, or its CSV text."""
    if not csv:
        return await client.request("GET", "/usage", params=params)
    try:
        response = await client._http.get("/usage", params={**params, "format": "csv"})
    except httpx.TransportError as exc:
        raise ServerUnreachable(f"cannot reach the forgeci server at {client.server}: {exc}") from None
    except httpx.HTTPError as exc:
        raise ClientError(f"GET /usage: {exc}") from None
    _raise_for(response, response.content)
    return response.text


async def quotas(client: Client) -> list[dict[str, Any]]:
    """GET /quotas: each [[quotas]] rule's limits and use now."""
    found = await client.request("GET", "/quotas")
    rules = found.get("quotas") if isinstance(found, dict) else None
    if not isinstance(rules, list) or not all(isinstance(rule, dict) for rule in rules):
        raise BadResponse("GET /quotas: `quotas` is not a list of objects", 200)
    return rules


def quota_text(quota: Mapping[str, Any]) -> str:
    """`acme/*: running 3/4, queued 0/200, minutes this month 412/3000` (limits of 0 left out)."""
    parts = [f"{name} {float(quota.get(used) or 0):g}/{quota[limit]}" for name, used, limit in (
        ("running", "running", "max_running"), ("queued", "queued", "max_queued"),
        ("minutes this month", "minutes", "minutes_per_month")) if quota.get(limit)]
    if quota.get("per_user_running"):
        parts.append(f"per user {quota['per_user_running']}")
    return f"{quota.get('match')}: {', '.join(parts) or 'no limits'}"


def render(doc: Mapping[str, Any], out: TextIO) -> None:
    """The report as a table, then each quota's use."""
    currency = doc.get("currency")
    rows: Sequence[Mapping[str, Any]] = doc.get("rows") or []
    if not isinstance(rows, list):
        raise BadResponse("GET /usage: `rows` is not a list", 200)
    print(f"usage by {doc.get('by')}, {doc.get('from')} .. {doc.get('to')} (UTC)", file=out)
    width = max([len(str(r.get("key", ""))) for r in rows] + [5])
    head = f"{'':{width}}  {'pipelines':>9}  {'jobs':>5}  {'success':>7}  {'minutes':>9}  {'retried':>8}  {'stored':>9}"
    print(head + (f"  {'cost':>10}" if currency else ""), file=out)
    totals = doc.get("totals") or {}
    for r in [*rows, {"key": "total", **totals, "success_rate": None, "total": True}]:
        rate = r.get("success_rate")
        stored = r["stored_bytes"] if r.get("total") else (r.get("bytes") or {}).get("total", 0)
        line = (f"{r.get('key', '')!s:{width}}  {r.get('pipelines', 0):>9}  {r.get('jobs', 0):>5}  "
                f"{'–' if rate is None else f'{rate:.1%}':>7}  {r.get('minutes', 0):>9.1f}  "
                f"{r.get('retry_minutes', 0):>8.1f}  {size_text(stored or 0):>9}")
        if currency:
            line += f"  {r.get('cost', 0):>6.2f} {currency}"
        print(line, file=out)
    for quota in doc.get("quotas") or []:
        print(f"quota {quota_text(quota)}", file=out)


async def usage(client: Client, by: str, month: str | None, csv: bool, out: TextIO | None = None) -> int:
    params = {"by": by, **({"month": month} if month else {})}
    found = await fetch(client, params, csv=csv)
    stream = out or sys.stdout
    if csv:
        stream.write(found)
    elif not isinstance(found, dict):
        raise BadResponse("GET /usage: not a JSON object", 200)
    else:
        render(found, stream)
    return EXIT_OK
