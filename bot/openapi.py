"""The OpenAPI 3 document of the HTTP API, written out by hand so that it says exactly what is implemented."""

from __future__ import annotations

from typing import Any

from bot.openapi_agents import agent_paths
from runner.models import JobState, PipelineState, StepState

STATES = [state.value for state in JobState]
PIPELINE_STATES = [state.value for state in PipelineState]
STEP_STATES = [state.value for state in StepState]
TERMINAL_STATES = [state.value for state in JobState if state.is_terminal]

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {400: "bad input", 401: "missing or wrong API token", 404: "no such job, pipeline or entry",
            409: "the job or pipeline is in the wrong state", 413: "request body too large", 415: "body is not JSON",
            429: "a [[quotas]] rule refuses a new pipeline (max_queued, minutes_per_month): `detail` names it",
            503: "the queue database or the store is unavailable"}
    return {str(status): _json(_ERROR, text[status]) for status in statuses}


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _query(name: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


_JOB_ID = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
_PRIORITY = {"type": "integer", "minimum": 0, "maximum": 10}
_WRITE = [{"bearer": []}, {}]  # `{}`: no token needed when the server has none configured
_READ = [{"bearer": []}, {}]


def _op(summary: str, responses: dict[str, Any], *, security: list[Any] | None = None, **rest: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses, **rest}
    if security is not None:
        op["security"] = security
    return op


def _webhook(forge: str, headers: tuple[str, ...], types: tuple[str, ...]) -> dict[str, Any]:
    """A forge's delivery endpoint: signed by the forge (its secret, not the API token), answered 202 once the
    delivery and its pipelines are committed; their jobs come from planning, later."""
    ref = {"$ref": "#/components/schemas/WebhookAccepted"}
    return {"post": _op(
        f"A {forge} delivery", {"200": _json(ref, "a ping, answered"), "202": _json(ref, "committed, or ignored"),
                                **_errors(400, 401, 413, 415), "503": _json(_ERROR, "the forge's webhook secret is "
                                                                                 "not configured, or the queue is "
                                                                                 "unavailable")},
        operationId=f"{forge}Webhook", security=[],
        parameters=[{"name": name, "in": "header", "required": False, "schema": {"type": "string"}}
                    for name in headers],
        requestBody={"required": True, "content": {t: {"schema": {"type": "object"}} for t in types}},
    )}


def _pipeline_schemas(job_id: dict[str, Any], number: dict[str, Any]) -> dict[str, Any]:
    """What pipelines add: the submit answers, the pipeline, the webhook answer, the two kinds of events."""
    ids = {"type": "array", "items": job_id}
    event = {"state": {"type": "string"}, "data": {"type": "object"}, "t": {"type": "number"}}
    return {
        "Submitted": {"type": "object", "required": ["id", "pipeline", "jobs"], "properties": {
            "id": {**job_id, "description": "the pipeline's first job"}, "pipeline": job_id,
            "jobs": {**ids, "minItems": 1}}},
        "Planning": {"type": "object", "required": ["id", "pipeline", "jobs", "planning"], "properties": {
            "id": {"type": "null"}, "pipeline": job_id, "jobs": {"type": "array", "maxItems": 0},
            "planning": {"const": True}}},
        "Pipeline": {"type": "object", "required": _PIPELINE_REQUIRED, "properties": _pipeline_properties(
            job_id, number)},
        "PipelineDetail": {"type": "object", "required": [*_PIPELINE_REQUIRED, "jobs"], "properties": {
            **_pipeline_properties(job_id, number),
            "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/PipelineJob"}}}},
        "PipelineJob": {"type": "object", "required": ["id", "name", "display", "needs", "state", "depth"],
                        "properties": {
            "id": job_id, "name": {"type": ["string", "null"]},
            "display": {"type": ["string", "null"], "description": "a matrix member's name: `test (python=3.12)`"},
            "needs": {"type": "array", "items": {"type": "string"}}, "state": {"enum": STATES},
            "error": {"type": ["string", "null"]}, "started_at": number, "finished_at": number, "duration": number,
            "attempts": {"type": "integer"}, "waiting": {"type": "boolean"},
            "wait_reason": {"type": ["string", "null"], "description": "why a queued job is not running yet"},
            "depth": {"type": "integer", "minimum": 0,
                      "description": "0 without needs, else 1 + the deepest of its needs (the DAG's column)"}}},
        "PipelinePage": {"type": "object", "required": ["pipelines", "next_cursor"], "properties": {
            "pipelines": {"type": "array", "items": {"$ref": "#/components/schemas/Pipeline"}},
            "next_cursor": {"type": ["string", "null"]}}},
        "PipelineRetried": {"type": "object", "required": ["pipeline", "jobs", "retry_of"], "properties": {
            "pipeline": job_id, "jobs": ids, "retry_of": job_id, "planning": {"const": True}}},
        "PipelineMetrics": {"type": "object", "required": ["total", "by_state", "success_rate", "avg_duration",
                                                           "p95_duration"], "properties": {
            "total": {"type": "integer"}, "by_state": {"type": "object", "additionalProperties": {"type": "integer"}},
            "success_rate": number, "avg_duration": number, "p95_duration": number}},
        "WebhookAccepted": {"type": "object", "properties": {
            "pipelines": {**ids, "description": "the pipelines the delivery made (or, redelivered, had made)"},
            "jobs": {**ids, "description": "empty for a new delivery; a redelivery's pipelines' jobs by now"},
            "delivery": {"type": "string"}, "redelivery": {"const": True},
            "superseded_pipelines": ids, "superseded": {**ids, "description": "their jobs, cancelled or stopping"},
            "reason": {"type": "string", "description": "why the delivery made no pipeline"},
            "pong": {"const": True}, "ignored": {"type": "string", "description": "an event forgeci does not use"}}},
        "JobEvent": {"type": "object", "required": ["job_id", "state", "kind"], "properties": {
            "job_id": job_id, "kind": {"enum": ["state", "step", "step_done", "priority", "sha", "ready",
                                                "cancel_requested"]}, **event}},
        "PipelineEvent": {"type": "object", "required": ["pipeline_id", "state", "kind"], "properties": {
            "pipeline_id": job_id, "kind": {"const": "pipeline"}, **event, "state": {"enum": PIPELINE_STATES}}},
    }


_PIPELINE_REQUIRED = ["id", "repo", "ref", "sha", "event", "state", "spec", "created_at", "started_at", "finished_at",
                      "error", "job_ids", "jobs_total", "jobs_done", "duration"]


def _pipeline_properties(job_id: dict[str, Any], number: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": job_id, "repo": {"type": "string"}, "ref": {"type": "string"}, "sha": {"type": ["string", "null"]},
        "event": {"type": "string"}, "spec": {"type": "object", "description": "the trigger: what each job inherits"},
        "state": {"enum": PIPELINE_STATES}, "concurrency_group": {"type": ["string", "null"]},
        "cancel_requested": {"type": "boolean"}, "plan_attempts": {"type": "integer"},
        "plan_after": {"type": "number"}, "error": {"type": ["string", "null"]}, "created_at": {"type": "number"},
        "started_at": number, "finished_at": number, "job_ids": {"type": "array", "items": job_id},
        "jobs_total": {"type": "integer", "minimum": 0}, "jobs_done": {"type": "integer", "minimum": 0,
                                                                       "description": "its jobs in a final state"},
        "first_queued_at": number,
        "duration": {**number, "description": "end to end, first job queued -> last job done; null until it ends"}}


def _pipeline_paths() -> dict[str, Any]:
    """The pipelines' endpoints: list, one with its jobs, cancel, retry."""
    path_id = [{"name": "id", "in": "path", "required": True, "schema": _JOB_ID, "description": "pipeline id"}]
    return {
        "/pipelines": {"get": _op(
            "List pipelines, newest first",
            {"200": _json({"$ref": "#/components/schemas/PipelinePage"}, "one page"), **_errors(400, 401, 503)},
            security=_READ, operationId="listPipelines",
            parameters=[_query("status", {"enum": PIPELINE_STATES}, "only pipelines in this state"),
                        _query("repo", {"type": "string"}, "only pipelines of this repository"),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size (50)"),
                        _query("cursor", {"type": "string", "minLength": 1}, "next_cursor of the previous page")],
        )},
        "/pipelines/{id}": {"get": _op(
            "A pipeline with its jobs: needs, states, durations, dependency depth, why a queued job waits",
            {"200": _json({"$ref": "#/components/schemas/PipelineDetail"}, "the pipeline"),
             **_errors(400, 401, 404, 503)},
            security=_READ, operationId="pipeline", parameters=path_id,
        )},
        "/pipelines/{id}/cancel": {"post": _op(
            "Cancel a pipeline: its queued jobs end now, its running ones are stopped, no `always` job runs",
            {"200": _json({"type": "object", "required": ["id", "state"], "properties": {
                "id": _JOB_ID, "state": {"enum": PIPELINE_STATES}, "cancel_requested": {"const": True}}},
                "cancelled, or running while its running jobs are stopped"),
             **_errors(400, 401, 404, 409, 413, 415, 503)},
            security=_WRITE, operationId="cancelPipeline", parameters=path_id,
        )},
        "/pipelines/{id}/retry": {"post": _op(
            "Run a finished pipeline again: a new pipeline at the same sha, or (failed_only) its failed jobs and "
            "the ones they skipped, in the same pipeline",
            {"201": _json({"$ref": "#/components/schemas/PipelineRetried"}, "the pipeline and the jobs queued"),
             "202": _json({"$ref": "#/components/schemas/PipelineRetried"},
                          "a new pipeline whose fetch failed: planning goes on in the background"),
             **_errors(400, 401, 404, 409, 413, 415, 429, 503)},
            security=_WRITE, operationId="retryPipeline", parameters=path_id,
            requestBody={"required": False, "content": {"application/json": {"schema": {
                "type": "object", "properties": {"failed_only": {"type": "boolean"}},
                "additionalProperties": False}}}},
        )},
    }


def openapi_document(server_url: str) -> dict[str, Any]:
    """The document for a server reachable at `server_url`."""
    id_body = _body({"id": _JOB_ID}, ["id"])
    sse = {"description": "Server-Sent Events", "content": {"text/event-stream": {"schema": {"type": "string"}}}}
    job_ref = {"$ref": "#/components/schemas/Job"}
    number = {"type": ["number", "null"]}
    paths: dict[str, Any] = {
        "/jobs/submit": {"post": _op(
            "Submit a pipeline, planned before the answer",
            {"201": _json({"$ref": "#/components/schemas/Submitted"},
                          "planned: its jobs; `id` is the first (a one-job pipeline's only) job"),
             "202": _json({"$ref": "#/components/schemas/Planning"},
                          "its fetch failed or took too long: planning goes on in the background"),
             **_errors(400, 401, 413, 415, 429, 503)},
            security=_WRITE, operationId="submitJob",
            requestBody=_body({
                "repo": {"type": "string", "minLength": 1, "description": "clone URL or a path on the server"},
                "ref": {"type": "string", "minLength": 1, "description": "branch, tag or full ref"},
                "sha": {"type": ["string", "null"], "description": "exact commit; default: the ref's head"},
                "steps": {"type": ["array", "null"], "items": {"$ref": "#/components/schemas/Step"},
                          "minItems": 1, "description": "inline steps instead of the repository's .forgeci.toml"},
                "env": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
                "priority": {**_PRIORITY, "description": "0..10, higher runs first; default queue.default_priority"},
                "inputs": {"type": ["object", "null"], "additionalProperties": {"type": "string"},
                           "description": "a manual run's inputs, checked against the pipeline's [inputs]; jobs see "
                                          "INPUT_<KEY>"},
                "user": {"type": ["string", "null"], "minLength": 1, "maxLength": 100,
                         "description": "who triggers it (quotas' per_user_running, usage by user); default `api`"},
            }, ["repo", "ref"]),
        )},
        "/jobs/status": {"get": _op(
            "A job with its steps, durations, cache result and attempts",
            {"200": _json(job_ref, "the job"), **_errors(400, 401, 404, 503)}, security=_READ,
            operationId="jobStatus", parameters=[_query("id", _JOB_ID, "job id", True)],
        )},
        "/jobs/logs": {"get": _op(
            "Follow a job's log (SSE)",
            {"200": {**sse, "description": "one event per line (`id` = line number, data = LogLine JSON); "
                                           "an `end` event when the job is finished"},
             **_errors(400, 401, 404, 503)},
            security=_READ, operationId="jobLogs",
            parameters=[_query("id", _JOB_ID, "job id", True),
                        _query("follow", {"enum": ["true", "false"]},
                               "false: the lines written so far, then `end` with the job's current state"),
                        _query("service", {"type": "string"},
                               "the kept log of this service of the job instead (404 names the job's services); "
                               "a declared service not started yet has no lines yet; followed by polling until "
                               "the job is finished"),
                        _query("after", {"type": "integer", "minimum": 0},
                               "send lines after this number (the Last-Event-ID header wins)"),
                        {"name": "Last-Event-ID", "in": "header", "required": False,
                         "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                         "description": "resume after this line"}],
        )},
        "/jobs/cancel": {"post": _op(
            "Cancel a queued or running job",
            {"200": _json({"type": "object", "required": ["id", "state"], "properties": {
                "id": _JOB_ID, "state": {"enum": ["cancelled", "running"]},
                "cancel_requested": {"type": "boolean"}}}, "cancelled, or running and being stopped"),
             **_errors(400, 401, 404, 409, 413, 415, 503)},
            security=_WRITE, operationId="cancelJob", requestBody=id_body,
        )},
        "/jobs/retry": {"post": _op(
            "Run a finished job again as a new job",
            {"201": _json({"type": "object", "required": ["id", "retry_of"],
                           "properties": {"id": _JOB_ID, "retry_of": _JOB_ID}}, "the new job"),
             **_errors(400, 401, 404, 409, 413, 415, 429, 503)},
            security=_WRITE, operationId="retryJob",
            requestBody=_body({"id": _JOB_ID, "from_failed_step": {"type": "boolean"}}, ["id"]),
        )},
        "/jobs/priority": {"post": _op(
            "Change a queued job's priority",
            {"200": _json({"type": "object", "required": ["id", "priority"],
                           "properties": {"id": _JOB_ID, "priority": _PRIORITY}}, "the new priority"),
             **_errors(400, 401, 404, 409, 413, 415, 503)},
            security=_WRITE, operationId="setPriority",
            requestBody=_body({"id": _JOB_ID, "priority": _PRIORITY}, ["id", "priority"]),
        )},
        "/jobs": {"get": _op(
            "List jobs, newest first or in dispatch order",
            {"200": _json({"type": "object", "required": ["jobs", "next_cursor"], "properties": {
                "jobs": {"type": "array", "items": job_ref},
                "next_cursor": {"type": ["string", "null"]}}}, "one page"),
             **_errors(400, 401, 503)},
            security=_READ, operationId="listJobs",
            parameters=[_query("status", {"enum": STATES}, "only jobs in this state"),
                        _query("repo", {"type": "string"}, "only jobs of this repository"),
                        _query("order", {"enum": ["newest", "dispatch"]},
                               "`dispatch`: the queued jobs in the order they will run"),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size (50)"),
                        _query("cursor", {"type": "string", "minLength": 1}, "next_cursor of the previous page")],
        )},
        **_pipeline_paths(),
        "/events": {"get": _op(
            "Every job and pipeline state change, and step progress (SSE)",
            {"200": {**sse, "description": "`job` events (JobEvent: {job_id, state, kind, data, t}) and "
                                           "`pipeline` events (PipelineEvent: {pipeline_id, state, kind, data, t}; "
                                           "data.jobs when planned, data.error when planning is retried or "
                                           "the pipeline was superseded)"}, **_errors(401)},
            security=_READ, operationId="events",
        )},
        "/metrics": {"get": _op(
            "Job and pipeline metrics over the last hour, day or week",
            {"200": {"description": "the metrics", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Metrics"}},
                "text/plain": {"schema": {"type": "string"}}}},
             **_errors(400, 401, 503)},
            security=_READ, operationId="metrics",
            parameters=[_query("range", {"enum": ["hour", "day", "week"]}, "the range (day)"),
                        _query("format", {"enum": ["json", "prometheus"]},
                               "prometheus: text exposition (also for `Accept: text/plain`)")],
        )},
        "/cache/stats": {"get": _op(
            "Cache entries (most recently used first), their total size and the hit rate of the last week",
            {"200": _json({"type": "object", "required": ["entries", "count", "total_size", "hit_rate"],
                           "properties": {
                               "entries": {"type": "array", "items": {"$ref": "#/components/schemas/CacheEntry"}},
                               "count": {"type": "integer"}, "total_size": {"type": "integer"},
                               "hits": {"type": "integer"}, "hit_rate": number,
                               "hit_rate_range": {"enum": ["week"]},
                               "repo_sizes": {"type": "object", "additionalProperties": {"type": "integer"},
                                              "description": "bytes of each repository's entries"},
                               "repo_limit": {"type": "integer",
                                              "description": "retention.cache_bytes_per_repo"}}}, "the cache index"),
             **_errors(400, 401, 503)},
            security=_READ, operationId="cacheStats",
            parameters=[_query("repo", {"type": "string"}, "only this repository's entries (its cache id)"),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "entries (100)")],
        )},
        "/cache/{key}": {"delete": _op(
            "Delete a cache entry and its archive",
            {"200": _json({"type": "object", "required": ["deleted"],
                           "properties": {"deleted": {"$ref": "#/components/schemas/CacheEntry"}}}, "deleted"),
             **_errors(401, 404, 503), "405": _json(_ERROR, "`/cache/stats` is the statistics, not a key")},
            security=_WRITE, operationId="deleteCache",
            parameters=[{"name": "key", "in": "path", "required": True,
                         "schema": {"type": "string", "minLength": 1, "not": {"const": "stats"}},
                         "description": "the entry's key ({repo}/{scope}/{hash}; URL-encode the slashes)"}],
        )},
        "/admin/maintenance": {"post": _op(
            "Prune old snapshots, caches, jobs and logs now",
            {"200": _json({"type": "object", "properties": {
                name: {"type": "integer"} for name in ("snapshots", "caches", "jobs", "logs", "orphans",
                                                       "images", "freed_bytes")} | {
                "errors": {"type": "array", "items": {"type": "string"}}}}, "what was pruned"),
             **_errors(400, 401, 413, 415, 503)},
            security=_WRITE, operationId="maintenance",
            requestBody={"required": False, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False}}}},
        )},
        "/webhooks/github": _webhook("github", ("X-GitHub-Event", "X-GitHub-Delivery", "X-Hub-Signature-256"),
                                     ("application/json", "application/x-www-form-urlencoded")),
        "/webhooks/gitea": _webhook("gitea", ("X-Gitea-Event", "X-Gitea-Delivery", "X-Gitea-Signature"),
                                    ("application/json", "application/x-www-form-urlencoded")),
        "/webhooks/gitlab": _webhook("gitlab", ("X-Gitlab-Event", "X-Gitlab-Token", "X-Gitlab-Event-UUID"),
                                     ("application/json",)),
        "/healthz": {"get": _op(
            "Liveness: the container engine and the queue",
            {"200": _json({"type": "object"}, "healthy"), "503": _json({"type": "object"}, "degraded")},
            operationId="healthz",
        )},
        "/openapi.json": {"get": _op("This document", {"200": _json({"type": "object"}, "OpenAPI 3")},
                                     operationId="openapi")},
    }
    paths.update(artifact_paths())
    from bot.openapi_reports import badge_paths, usage_paths  # they build on this module's helpers
    from bot.openapi_triggers import trigger_paths

    paths.update(badge_paths())
    paths.update(trigger_paths())
    paths.update(usage_paths())
    paths.update(agent_paths())
    schemas: dict[str, Any] = {
        "Error": {"type": "object", "required": ["error", "detail"],
                  "properties": {"error": {"type": "string"}, "detail": {}}},
        "Step": {"type": "object", "required": ["run"], "properties": {
            "name": {"type": "string", "minLength": 1}, "run": {"type": "string", "minLength": 1},
            "timeout": {"type": "string", "description": "a duration such as 90s or 10m"},
            "continue_on_error": {"type": "boolean"},
            "env": {"type": "object", "additionalProperties": {"type": "string"}}},
            "additionalProperties": False},
        "StepRecord": {"type": "object", "properties": {
            "index": {"type": "integer"}, "name": {"type": "string"}, "state": {"enum": STEP_STATES},
            "exit_code": {"type": ["integer", "null"]}, "started_at": number, "finished_at": number,
            "duration": number}},
        "Job": {"type": "object", "required": ["id", "state", "spec", "attempts", "steps"], "properties": {
            "id": _JOB_ID, "state": {"enum": STATES}, "spec": {"type": "object"},
            "attempts": {"type": "integer"}, "runner_id": {"type": ["string", "null"]},
            "lease_expires": number, "cancel_requested": {"type": "boolean"}, "queued_at": {"type": "number"},
            "started_at": number, "finished_at": number, "duration": number,
            "error": {"type": ["string", "null"]},
            "cache_hit": {"type": ["boolean", "null"], "description": "every cache entry was an exact hit; null: no "
                          "restore was attempted"},
            "cache": {"enum": ["all", "some", "none", None], "description": "how many of its cache entries hit"},
            "caches": {"type": "array", "items": {"$ref": "#/components/schemas/CacheResult"},
                       "description": "`/jobs/status`: each cache entry of the latest attempt"},
            "steps": {"type": "array", "items": {"$ref": "#/components/schemas/StepRecord"}},
            "pipeline_id": {**_JOB_ID, "type": ["integer", "null"], "description": "null: a job of no pipeline"},
            "name": {"type": ["string", "null"], "description": "its job in the pipeline file (`test`)"},
            "display": {"type": ["string", "null"], "description": "a matrix member's name: `test (python=3.12)`"},
            "needs": {"type": "array", "items": {"type": "string"}, "description": "the jobs it waits for"},
            "waiting": {"type": "boolean", "description": "queued, but its needs are not all done"},
            "wait_reason": {"type": ["string", "null"], "description": "why a queued job is not running yet "
                            "(`/jobs?order=dispatch`, `/jobs/status`): its needs, its concurrency group, its "
                            "matrix's max_parallel, a quota, the runner labels it waits for (`waiting for a runner "
                            "with: big`), no free slot, or next in line; null for a job not queued"},
            "attempts_on": {"type": "array", "description": "`/jobs/status`: the runner of each attempt",
                            "items": {"type": "object", "properties": {
                                "attempt": {"type": "integer"}, "runner": {"type": ["string", "null"]},
                                "agent": {"type": ["string", "null"], "description": "NAME:INSTANCE of an agent"},
                                "on": {"type": "string"}, "state": {"type": "string"}}}}}},
        "CacheResult": {"type": "object", "required": ["name", "key", "result"], "properties": {
            "name": {"type": "string"}, "key": {"type": "string"}, "result": {"enum": ["hit", "fallback", "miss"]},
            "restored_key": {"type": ["string", "null"], "description": "what was restored: the key, or a fallback's"},
            "size": {"type": "integer"}, "seconds": {"type": "number"},
            "saved": {"enum": ["saved", "exists", "empty", "failed", None]}, "saved_size": {"type": ["integer", "null"]},
            "save_seconds": number, "attempt": {"type": "integer"}}},
        "CacheEntry": {"type": "object", "required": ["key", "repo", "size"], "properties": {
            "key": {"type": "string"}, "repo": {"type": "string"}, "scope": {"type": "string"},
            "image": {"type": "string"}, "paths": {"type": "array", "items": {"type": "string"}},
            "object": {"type": "string"}, "size": {"type": "integer"}, "checksum": {"type": "string"},
            "created_at": {"type": "number"}, "last_used": {"type": "number"}, "hits": {"type": "integer"}}},
        "Metrics": {"type": "object", "required": ["range", "jobs", "success_rate", "avg_duration",
                                                   "cache_hit_rate", "queue_depth", "running"], "properties": {
            "range": {"enum": ["hour", "day", "week"]}, "since": {"type": "number"}, "until": {"type": "number"},
            "jobs": {"type": "integer"},
            "notifications": {"type": "object", "description": "outbox messages: kind -> state -> count",
                              "additionalProperties": {"type": "object", "additionalProperties": {"type": "integer"}}},
            "by_state": {"type": "object", "additionalProperties": {"type": "integer"}},
            "success_rate": number, "avg_duration": number, "p95_duration": number, "cache_hit_rate": number,
            "cache_hits": {"type": "integer"}, "cache_lookups": {"type": "integer", "description": "cache entries "
                                                                                   "whose restore was attempted"},
            "cache_results": {"type": "object", "additionalProperties": {"type": "integer"},
                              "description": "cache entries restored by result: hit, fallback, miss"},
            "queue_depth": {"type": "integer"}, "running": {"type": "integer"},
            "bucket_seconds": {"type": "number"}, "buckets": {"type": "array", "items": {"type": "object"}},
            "pipelines": {"$ref": "#/components/schemas/PipelineMetrics"}}},
        **_pipeline_schemas(_JOB_ID, number),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "forgeci", "version": "1",
                 "description": "Pipelines, jobs, live logs, events and metrics of a forgeci server, and the forges' "
                                "webhooks (signed with their own secrets). Mutating calls need "
                                "`Authorization: Bearer TOKEN` when the server has a token configured; reads "
                                "need it too with `server.protect_reads`."},
        "servers": [{"url": server_url}],
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                           "agentToken": {"type": "http", "scheme": "bearer",
                                                          "description": "an agent's token (forgeci agents token "
                                                                         "create NAME)"}}},
    }


def artifact_paths() -> dict[str, Any]:
    """The artifact listing and its signed download links (bot/artifacts.py)."""
    number = {"type": ["number", "null"]}
    file = {"type": "object", "required": ["path", "size", "sha256"], "properties": {
        "path": {"type": "string"}, "size": {"type": "integer"}, "sha256": {"type": "string"},
        "url": {"type": ["string", "null"], "description": "signed link to this file"}}}
    artifact = {"type": "object", "required": ["id", "job_id", "state", "files"], "properties": {
        "id": {"type": "integer"}, "job_id": _JOB_ID, "pipeline_id": {"type": ["integer", "null"]},
        "job": {"type": "string"}, "display": {"type": "string"},
        "state": {"enum": ["kept", "empty", "not kept"]}, "error": {"type": ["string", "null"]},
        "paths": {"type": "array", "items": {"type": "string"}}, "size": {"type": "integer"},
        "raw_size": {"type": ["integer", "null"]}, "checksum": {"type": ["string", "null"]},
        "file_count": {"type": "integer"}, "total_size": {"type": "integer"}, "created_at": {"type": "number"},
        "expires_at": number, "links": {"type": "object", "properties": {
            "archive": {"type": "string"}, "tar": {"type": "string"}, "zip": {"type": "string"}}},
        "files": {"type": "array", "items": file}}}
    signed = [_query("expires", {"type": "string", "pattern": "^[0-9]{1,12}$"}, "unix time the link ends", True),
              _query("sig", {"type": "string"}, "HMAC-SHA256 of the path and expiry", True),
              {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}, "description": "artifact id"},
              {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"},
               "description": "one byte range (`bytes=0-99`)"}]
    body = {"description": "the bytes", "content": {"application/octet-stream": {"schema": {"type": "string"}}}}
    refused = {"403": _json(_ERROR, "expired, or a signature that does not match the path and expiry"),
               "404": _json(_ERROR, "no such artifact or file (expired or replaced)"),
               "416": _json(_ERROR, "a range outside the file"), "503": _json(_ERROR, "the store is unavailable")}

    def download(summary: str, operation: str, extra: list[Any] | None = None) -> dict[str, Any]:
        return {"get": _op(summary, {"200": body, "206": {**body, "description": "the range asked for"}, **refused},
                           security=[{}], operationId=operation, parameters=signed + (extra or []))}

    return {
        "/artifacts": {"get": _op(
            "A job's or a pipeline's artifacts, each file with a signed link",
            {"200": _json({"type": "object", "required": ["artifacts", "links_expire_at"], "properties": {
                "artifacts": {"type": "array", "items": artifact}, "links_expire_at": {"type": "integer"}}},
                "the artifacts"), **_errors(400, 401, 404, 503)},
            security=_READ, operationId="listArtifacts",
            parameters=[_query("job", _JOB_ID, "a job id (or pipeline)"),
                        _query("pipeline", _JOB_ID, "a pipeline id (or job)")])},
        "/artifacts/dl/{id}/archive.tar.zst": download("An artifact's archive (signed link)", "downloadArtifact"),
        "/artifacts/dl/{id}/archive.tar": download("An artifact as a plain tar (signed link)", "downloadArtifactTar"),
        "/artifacts/dl/{id}/archive.zip": {"get": _op(
            "An artifact's files as a zip, deflated as it streams (signed link; no ranges, no Content-Length)",
            {"200": body, **{code: answer for code, answer in refused.items() if code != "416"}}, security=[{}],
            operationId="downloadArtifactZip", parameters=signed[:3])},
        "/artifacts/dl/{id}/files/{path}": download("One file of an artifact (signed link)", "downloadArtifactFile", [
            {"name": "path", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "the file's path in the artifact"}]),
    }
