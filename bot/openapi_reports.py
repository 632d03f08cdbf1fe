"""The OpenAPI description of the reporting endpoints: the status badge (bot/notify/badge.py), the usage report
and the quotas' use (bot/usage.py)."""

from __future__ import annotations

from typing import Any

from bot.openapi import _READ, _errors, _json, _op, _query


def badge_paths() -> dict[str, Any]:
    """The status badge (bot/notify/badge.py)."""
    svg = {"description": "the badge", "headers": {"ETag": {"schema": {"type": "string"}},
                                                 "Cache-Control": {"schema": {"type": "string"}}},
           "content": {"image/svg+xml": {"schema": {"type": "string"}}}}
    path = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": about}
            for name, about in (("owner", "the repository's owner"), ("name", "the repository's name"))]
    return {"/badge/{owner}/{name}.svg": {"get": _op(
        "An SVG badge of the newest pipeline's state on a branch (passing, failing, running...)",
        {"200": svg, "304": {"description": "not modified (If-None-Match)"}, **_errors(401, 404, 503)},
        security=_READ, operationId="badge",
        parameters=[*path, _query("branch", {"type": "string"}, "the branch (any branch when absent)")])}}
def usage_paths() -> dict[str, Any]:
    """The usage report and the quotas' use (bot/usage.py), and the agents (bot/agents_api.py)."""
    count = {"type": "integer"}
    row = {"type": "object", "required": ["key", "pipelines", "jobs", "minutes", "retry_minutes", "bytes"],
           "properties": {"key": {"type": "string"}, "pipelines": count, "jobs": count, "succeeded": count,
                          "success_rate": {"type": ["number", "null"]}, "attempts": count,
                          "minutes": {"type": "number"}, "retry_minutes": {"type": "number"},
                          "bytes": {"type": "object", "additionalProperties": count}, "cost": {"type": "number"}}}
    quota = {"type": "object", "required": ["match", "running", "max_running"], "properties": {
        "match": {"type": "string"}, "running": count, "max_running": count, "queued": count, "max_queued": count,
        "minutes": {"type": "number"}, "minutes_per_month": count, "per_user_running": count,
        "users": {"type": "object", "additionalProperties": count}}}
    day = {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
    str_ = {"type": "string"}
    agent = {"type": "object", "required": ["id", "name", "labels", "last_seen", "online", "running_jobs"],
             "properties": {"id": str_, "name": str_, "instance": str_, "labels": {"type": "array", "items": str_},
                            "version": {"type": ["string", "null"]}, "address": {"type": ["string", "null"]},
                            "max_concurrent": {"type": ["integer", "null"]}, "first_seen": {"type": "number"},
                            "last_seen": {"type": "number"}, "online": {"type": "boolean"},
                            "running_jobs": {"type": "array", "items": count}}}
    return {
        "/usage": {"get": _op(
            "Usage per owner, repository or user: pipelines, jobs, success rate, minutes, stored bytes, costs",
            {"200": {"description": "the report", "content": {
                "application/json": {"schema": {"type": "object", "required": ["by", "from", "to", "rows", "totals"],
                                                "properties": {"by": {"enum": ["owner", "repo", "user"]},
                                                               "from": day, "to": day,
                                                               "rows": {"type": "array", "items": row},
                                                               "totals": {"type": "object"},
                                                               "daily": {"type": "array"},
                                                               "quotas": {"type": "array", "items": quota},
                                                               "currency": {"type": "string"}}}},
                "text/csv": {"schema": {"type": "string"}}}},
             **_errors(400, 401, 503)},
            security=_READ, operationId="usage",
            parameters=[_query("by", {"enum": ["owner", "repo", "user"]}, "group by (repo)"),
                        _query("from", day, "first day, UTC (default: the month's first)"),
                        _query("to", day, "last day, UTC, included (default: today)"),
                        _query("month", {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
                               "a calendar month instead of from/to"),
                        _query("format", {"enum": ["json", "csv"]}, "json (default) or csv")],
        )},
        "/agents": {"get": _op(
            "The remote runners (agents) that claimed jobs, with their labels and running jobs, and the embedded "
            "runner's labels",
            {"200": _json({"type": "object", "required": ["agents", "embedded"], "properties": {
                "agents": {"type": "array", "items": agent},
                "embedded": {"type": "object", "properties": {"enabled": {"type": "boolean"},
                                                              "labels": {"type": "array", "items": str_}}}}},
                "the agents"), **_errors(400, 401, 503)},
            security=_READ, operationId="agents",
        )},
        "/quotas": {"get": _op(
            "Each [[quotas]] rule's limits and its use now (0 = no limit)",
            {"200": _json({"type": "object", "required": ["quotas"], "properties": {
                "quotas": {"type": "array", "items": quota}}}, "the rules"), **_errors(400, 401, 503)},
            security=_READ, operationId="quotas",
        )},
    }
