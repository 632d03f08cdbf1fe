"""The OpenAPI description of the triggers' endpoints: schedules (bot.schedules_api) and declared inputs
(bot.inputs_api)."""

from __future__ import annotations

from typing import Any

from bot.openapi import PIPELINE_STATES, _READ, _WRITE, _errors, _json, _op


def trigger_paths() -> dict[str, Any]:
    """GET /schedules, POST /schedules/{name}/run, GET /inputs."""
    number = {"type": ["number", "null"]}
    schedule = {"type": "object", "required": ["name", "repo", "ref", "cron", "timezone", "next_due",
                                               "last_pipeline"], "properties": {
        "name": {"type": "string"}, "repo": {"type": "string"}, "ref": {"type": "string"},
        "cron": {"type": "string", "description": "five fields"}, "timezone": {"type": "string"},
        "next_due": {**number, "description": "unix time of the next due time; null: never again"},
        "last_pipeline": {"type": ["object", "null"], "properties": {
            "id": {"type": "integer"}, "state": {"enum": [*PIPELINE_STATES, None]}, "due": number}}}}
    name = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1},
             "description": "the schedule's name in the server's settings"}]
    declared = {"type": "object", "properties": {
        "description": {"type": "string"}, "default": {"type": ["string", "null"]},
        "choices": {"type": "array", "items": {"type": "string"}}, "required": {"type": "boolean"}}}
    text = {"type": "string", "minLength": 1}
    return {
        "/inputs": {"get": _op(
            "The inputs a repository's ref declares ([inputs] of the pipeline file its last planned pipeline read)",
            {"200": _json({"type": "object", "required": ["known", "pipeline", "inputs"], "properties": {
                "known": {"type": "boolean", "description": "false: no pipeline of that ref was planned yet"},
                "pipeline": {"type": ["integer", "null"]},
                "inputs": {"type": "object", "additionalProperties": declared}}}, "its declared inputs"),
             **_errors(400, 401, 503)},
            security=_READ, operationId="declaredInputs",
            parameters=[{"name": "repo", "in": "query", "required": True, "schema": text},
                        {"name": "ref", "in": "query", "required": True, "schema": text}],
        )},
        "/schedules": {"get": _op(
            "The server's cron schedules: next due time, last pipeline and its state",
            {"200": _json({"type": "object", "required": ["schedules"], "properties": {
                "schedules": {"type": "array", "items": schedule}}}, "every [[schedules]] entry"),
             **_errors(400, 401, 503)},
            security=_READ, operationId="listSchedules",
        )},
        "/schedules/{name}/run": {"post": _op(
            "Run a schedule now (event `schedule`); its due times stay as they are",
            {"202": _json({"type": "object", "required": ["schedule", "pipeline"], "properties": {
                "schedule": {"type": "string"}, "pipeline": {"type": "integer"}}},
                "its pipeline, planned in the background"),
             **_errors(400, 401, 404, 413, 415, 503)},
            security=_WRITE, operationId="runSchedule", parameters=name,
            requestBody={"required": False, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False}}}},
        )},
    }
