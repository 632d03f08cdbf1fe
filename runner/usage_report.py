"""The usage report: per owner, repository or user over a time range — pipelines, jobs, success rate, minutes
(infrastructure retries apart), stored bytes and costs — as JSON-ready dicts, CSV text and a daily series."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from config.quotas import CostSettings
from runner.queue import Queue, UsageRow
from runner.queue.quotas import month_range, month_start
from runner.queue.usage import By

BYS: tuple[By, ...] = ("owner", "repo", "user")
CSV_COLUMNS = ("key", "pipelines", "jobs", "success_rate", "attempts", "minutes", "retry_minutes", "cache_bytes",
               "snapshot_bytes", "artifact_bytes", "stored_bytes", "cost")


@dataclass(frozen=True)
class Range:
    """[start, end) in epoch seconds, UTC."""

    start: float
    end: float

    @property
    def label(self) -> tuple[str, str]:
        return _day(self.start), _day(self.end)


def _day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


def parse_day(text: str, key: str) -> float:
    """A `YYYY-MM-DD` day (UTC) as epoch seconds; ValueError naming `key` otherwise."""
    try:
        day = dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ValueError(f"{key}: expected a day like 2026-12-01, got {text!r}") from None
    if not 1970 <= day.year <= 9000:
        raise ValueError(f"{key}: expected a day from 1970 to 9000, got {text!r}")
    return day.timestamp()


def report_range(now: float, *, month: str | None = None, since: str | None = None,
                 until: str | None = None) -> Range:
    """The report's range: a `YYYY-MM` month, or `from` (a day, included) to `to` (a day, included), or by
    default the current month so far (UTC). ValueError for a bad value."""
    if month is not None:
        if since is not None or until is not None:
            raise ValueError("month: give either month or from/to")
        return Range(*month_range(month))
    start = parse_day(since, "from") if since is not None else month_start(now)
    end = parse_day(until, "to") + 86400 if until is not None else max(now, start) + 1
    if end <= start:
        raise ValueError("to: expected a day on or after from")
    return Range(start, end)


def row_dict(row: UsageRow, costs: CostSettings) -> dict[str, Any]:
    stored = sum(row.bytes.values())
    out: dict[str, Any] = {
        "key": row.key, "pipelines": row.pipelines, "jobs": row.jobs, "succeeded": row.succeeded,
        "success_rate": None if row.success_rate is None else round(row.success_rate, 4), "attempts": row.attempts,
        "minutes": round(row.minutes, 3), "retry_minutes": round(row.retry_seconds / 60, 3),
        "bytes": {**row.bytes, "total": stored}}
    if costs.enabled:
        out["cost"] = round(row.minutes * costs.per_minute + stored / 1e9 * costs.per_gb_month, 4)
    return out


def daily(queue: Queue, span: Range) -> list[dict[str, Any]]:
    """Minutes per UTC day of the range (the day an attempt ended), every day present."""
    minutes: dict[str, float] = defaultdict(float)
    for row in queue.usage_rows(span.start, span.end):
        minutes[_day(row[8])] += row[9] / 60
    days = []
    day = span.start
    while day < span.end and len(days) < 400:
        days.append({"day": _day(day), "minutes": round(minutes.get(_day(day), 0.0), 3)})
        day += 86400
    return days


def usage_document(queue: Queue, by: By, span: Range, costs: CostSettings) -> dict[str, Any]:
    """The whole report (GET /usage, `forgeci usage`, the dashboard page)."""
    rows = [row_dict(row, costs) for row in queue.usage_report(by, span.start, span.end)]
    start, _ = span.label
    total_minutes = sum(r["minutes"] for r in rows)
    doc: dict[str, Any] = {
        "by": by, "from": start, "to": _day(span.end - 1), "rows": rows,
        "totals": {"pipelines": sum(r["pipelines"] for r in rows), "jobs": sum(r["jobs"] for r in rows),
                   "minutes": round(total_minutes, 3),
                   "retry_minutes": round(sum(r["retry_minutes"] for r in rows), 3),
                   "stored_bytes": sum(r["bytes"]["total"] for r in rows)},
        "daily": daily(queue, span), "quotas": [use.to_dict() for use in queue.quota_use()]}
    if costs.enabled:
        doc["currency"] = costs.currency
        doc["totals"]["cost"] = round(sum(r["cost"] for r in rows), 4)
    return doc


def usage_csv(doc: dict[str, Any]) -> str:
    """The report's rows as CSV (a header, then one line per key)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in doc["rows"]:
        b = r["bytes"]
        writer.writerow([r["key"], r["pipelines"], r["jobs"], "" if r["success_rate"] is None else r["success_rate"],
                         r["attempts"], r["minutes"], r["retry_minutes"], b["caches"], b["snapshots"], b["artifacts"],
                         b["total"], r.get("cost", "")])
    return out.getvalue()


def usage_prometheus(queue: Queue) -> str:
    """Prometheus counters of runner minutes (this month, per UTC month so they only grow within it) and gauges
    of the bytes stored now, per kind."""
    now = queue._clock()
    span = Range(month_start(now), now + 1)
    rows = queue.usage_report("owner", span.start, span.end)
    minutes = sum(r.minutes for r in rows)
    retry = sum(r.retry_seconds for r in rows) / 60
    stored: dict[str, int] = defaultdict(int)
    for row in rows:
        for kind, size in row.bytes.items():
            stored[kind] += size
    month = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m")
    lines = [
        "# HELP forgeci_runner_minutes_total Runner minutes of finished attempts this calendar month (UTC).",
        "# TYPE forgeci_runner_minutes_total counter",
        f'forgeci_runner_minutes_total{{month="{month}"}} {minutes:.3f}',
        "# HELP forgeci_runner_retry_minutes_total Of those, minutes of attempts retried after an infrastructure fault.",
        "# TYPE forgeci_runner_retry_minutes_total counter",
        f'forgeci_runner_retry_minutes_total{{month="{month}"}} {retry:.3f}',
        "# HELP forgeci_stored_bytes Bytes in the object store now, by kind.",
        "# TYPE forgeci_stored_bytes gauge",
        *(f'forgeci_stored_bytes{{kind="{kind}"}} {stored.get(kind, 0)}' for kind in ("caches", "snapshots",
                                                                                   "artifacts")),
    ]
    quotas = queue.quota_use()
    if quotas:
        lines += ["# HELP forgeci_quota_minutes_used Runner minutes this month of each [[quotas]] rule's scope.",
                  "# TYPE forgeci_quota_minutes_used gauge"]
        lines += [f'forgeci_quota_minutes_used{{match="{_label(use.match)}"}} {use.minutes:.3f}' for use in quotas]
        lines += ["# HELP forgeci_quota_running Jobs running now of each [[quotas]] rule's scope.",
                  "# TYPE forgeci_quota_running gauge"]
        lines += [f'forgeci_quota_running{{match="{_label(use.match)}"}} {use.running}' for use in quotas]
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
