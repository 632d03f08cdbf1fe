"""The agent API's part of the OpenAPI document (bot/agent_api.py): remote runners' claims, leases and reports."""

from __future__ import annotations

from typing import Any

from runner.agent.wire import API, MAX_BATCH

_AGENT = [{"agentToken": []}]
_ERR = {"$ref": "#/components/schemas/Error"}
_LEASE = {"type": "string", "description": "the lease id the claim answered"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*extra: tuple[int, str]) -> dict[str, Any]:
    known = [(400, "bad input"), (401, "missing or unknown agent token"), (403, "the token was revoked"),
             (413, "request body too large"), (415, "body is not JSON"), *extra]
    return {str(status): _json(_ERR, text) for status, text in known}


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _post(summary: str, operation: str, body: dict[str, Any], ok: dict[str, Any], *extra: tuple[int, str],
          job: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "operationId": operation, "security": _AGENT, "requestBody": body,
                          "responses": {"200": ok, **_errors(*extra)}}
    if job:
        op["parameters"] = [{"name": "job", "in": "path", "required": True, "schema": {"type": "integer"}}]
        op["responses"] |= {"404": _json(_ERR, "no such job"),
                            "409": _json(_ERR, "the lease is not the job's any more (expired, or a newer "
                                               "attempt's): stop the job, report nothing more")}
    return {"post": op}


def agent_paths() -> dict[str, Any]:
    lease = {"type": "object", "properties": {"id": _LEASE, "attempt": {"type": "integer"},
                                              "expires": {"type": "number"}, "seconds": {"type": "number"}}}
    handout = {"type": "object", "required": ["lease", "job", "secrets", "log_base"], "properties": {
        "lease": lease, "job": {"$ref": "#/components/schemas/Job"},
        "secrets": {"type": "object", "description": "the [secrets] specs, and the values this job may have "
                                                     "(none over plain http from a non-loopback address)"},
        "log_base": {"type": "integer", "description": "the last line number of the job's log on the coordinator: "
                                                       "this attempt's lines continue from it"}}}
    line = {"type": "object", "required": ["n", "t", "s", "o", "x"], "properties": {
        "n": {"type": "integer", "minimum": 1}, "t": {"type": "number"}, "s": {"type": "string"},
        "o": {"enum": ["stdout", "stderr", "system"]}, "x": {"type": "string"}}}
    claim = _post("Claim a job: a long poll (up to 30 s) answering a job under a lease, or 204", "agentClaim",
                  _body({"label": {"type": "string", "description": "this agent's name"},
                         "wait": {"type": "number", "minimum": 0, "maximum": 30},
                         "fresh": {"type": "boolean", "description": "the agent (re)started: requeue the jobs it "
                                                                     "held before, except `running`"},
                         "running": {"type": "array", "items": _LEASE},
                         "labels": {"type": "array", "items": {"type": "string"},
                                    "description": "this agent's labels: it is handed only jobs whose runs_on it "
                                                   "has all of"},
                         "version": {"type": "string", "maxLength": 64},
                         "max_concurrent": {"type": "integer", "minimum": 1}}, []),
                  _json(handout, "a job, its lease and everything it needs"), job=False)
    claim["post"]["responses"]["204"] = {"description": "no job within the wait"}
    return {
        f"{API}/claim": claim,
        f"{API}/jobs/{{job}}/heartbeat": _post(
            "Extend the lease; says whether the job was cancelled", "agentHeartbeat", _body({"lease": _LEASE},
                                                                                            ["lease"]),
            _json({"type": "object", "properties": {"cancel": {"type": "boolean"}, "expires": {"type": "number"}}},
                  "extended")),
        f"{API}/jobs/{{job}}/log": _post(
            "Numbered log lines; idempotent (lines the log has are skipped)", "agentLog",
            _body({"lease": _LEASE, "lines": {"type": "array", "items": line, "maxItems": MAX_BATCH}},
                  ["lease", "lines"]),
            _json({"type": "object", "properties": {"last": {"type": "integer"}}}, "the log's last line now"),
            (422, "a gap: the batch starts after the log's next line")),
        f"{API}/jobs/{{job}}/service-log": _post(
            "A service's kept log, numbered on from the coordinator's file of it (an empty batch answers its last "
            "number); idempotent", "agentServiceLog",
            _body({"lease": _LEASE, "name": {"type": "string"},
                   "lines": {"type": "array", "items": line, "maxItems": MAX_BATCH}}, ["lease", "name", "lines"]),
            _json({"type": "object", "properties": {"last": {"type": "integer"}}}, "the file's last line now"),
            (422, "a gap: the batch starts after the file's next line")),
        f"{API}/jobs/{{job}}/step": _post(
            "A step started or finished, or the commit checked out", "agentStep",
            _body({"lease": _LEASE, "event": {"enum": ["started", "finished", "sha"]}, "index": {"type": "integer"},
                   "name": {"type": "string"}, "total": {"type": "integer"}, "result": {"type": "object"},
                   "sha": {"type": "string"}}, ["lease", "event"]),
            _json({"type": "object"}, "recorded")),
        f"{API}/jobs/{{job}}/result": _post(
            "How the attempt ended (a resend answers what was recorded)", "agentResult",
            _body({"lease": _LEASE, "outcome": {"type": "object", "properties": {
                "state": {"type": "string"}, "error": {"type": ["string", "null"]}, "infra": {"type": "boolean"},
                "outputs": {"type": ["object", "null"]}, "steps": {"type": "array"}}},
                "requeue": {"type": "string", "description": "give the job back (the agent is stopping)"}},
                ["lease", "outcome"]),
            _json({"type": "object", "properties": {"state": {"type": "string"}}}, "the state recorded")),
        f"{API}/index": _post(
            "The coordinator's cache, snapshot and artifact indexes (lookups and records of the agent's store work)",
            "agentIndex", _body({"op": {"type": "string"}, "args": {"type": "object"}}, ["op", "args"]),
            _json({"type": "object", "properties": {"result": {}}}, "the index's answer"), job=False),
    }
