"""The agent protocol's JSON forms of queue values (jobs, index records, outcomes), shared by both ends.

The coordinator (bot.agent_api) encodes, the agent (runner.agent) decodes; the index operations an agent may call
through the coordinator are listed here once (INDEX_OPS), with how their arguments and results travel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

from runner.models import (
    CacheEntry,
    CacheResult,
    Job,
    JobSpec,
    JobState,
    Outcome,
    SnapshotRecord,
    StepResult,
    StepState,
)
from runner.queue.artifacts import ArtifactFile, ArtifactRecord

API = "/agent/v1"
MAX_WAIT = 30.0  # seconds a claim long-polls at most
VERSION = "0.1.0"  # this forgeci's, as an agent reports it (pyproject.toml's version)
MAX_BATCH = 1000  # log lines in one call


def job_to_dict(job: Job) -> dict[str, Any]:
    out = job.to_dict()
    out.pop("steps", None)
    out.pop("duration", None)
    return out


def job_from_dict(data: Mapping[str, Any]) -> Job:
    values = {f.name: data[f.name] for f in fields(Job) if f.name in data and f.name not in ("spec", "steps")}
    values["spec"] = JobSpec.from_dict(data["spec"])
    values["state"] = JobState(data["state"])
    values["needs"] = tuple(data.get("needs") or ())
    return Job(**values)


def cache_from_dict(data: Mapping[str, Any] | None) -> CacheEntry | None:
    return None if data is None else CacheEntry(**{**data, "paths": tuple(data["paths"])})


def snapshot_from_dict(data: Mapping[str, Any] | None) -> SnapshotRecord | None:
    return None if data is None else SnapshotRecord(**{**data, "state": JobState(data["state"])})


def artifact_to_dict(record: ArtifactRecord) -> dict[str, Any]:
    out = record.to_dict()
    out.pop("state", None)
    return out


def artifact_from_dict(data: Mapping[str, Any]) -> ArtifactRecord:
    values = {k: v for k, v in data.items() if k != "state"}
    values["paths"] = tuple(values["paths"])
    values["files"] = tuple(ArtifactFile(**f) for f in values.get("files") or ())
    return ArtifactRecord(**values)


def outcome_to_dict(outcome: Outcome) -> dict[str, Any]:
    return {"state": str(outcome.state), "error": outcome.error, "infra": outcome.infra,
            "outputs": dict(outcome.outputs) if outcome.outputs else None,
            "steps": [{"index": s.index, "name": s.name, "state": str(s.state), "exit_code": s.exit_code,
                       "duration": s.duration} for s in outcome.steps]}


def outcome_from_dict(data: Mapping[str, Any]) -> Outcome:
    steps = tuple(StepResult(s["index"], s["name"], StepState(s["state"]), s.get("exit_code"), float(s["duration"]))
                  for s in data.get("steps") or ())
    outputs = data.get("outputs")
    return Outcome(JobState(data["state"]), data.get("error"), bool(data.get("infra")), steps,
                   {str(k): str(v) for k, v in outputs.items()} if outputs else None)


def step_to_dict(result: StepResult) -> dict[str, Any]:
    return {"index": result.index, "name": result.name, "state": str(result.state), "exit_code": result.exit_code,
            "duration": result.duration}


def step_from_dict(data: Mapping[str, Any]) -> StepResult:
    return StepResult(int(data["index"]), str(data["name"]), StepState(data["state"]), data.get("exit_code"),
                      float(data["duration"]))


def _records(value: list[ArtifactRecord]) -> list[dict[str, Any]]:
    return [artifact_to_dict(r) for r in value]


def _maybe(encode: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else encode(value)


# op -> (argument names, how the coordinator encodes the result, how the agent decodes it). Arguments that are
# records travel as dicts and are rebuilt by ARG_DECODERS on the coordinator.
INDEX_OPS: dict[str, tuple[tuple[str, ...], Callable[[Any], Any], Callable[[Any], Any]]] = {
    "cache_entry": (("key",), _maybe(CacheEntry.to_dict), cache_from_dict),
    "cache_fallback": (("repo", "scope", "image", "paths"), _maybe(CacheEntry.to_dict), cache_from_dict),
    "add_cache_entry": (("entry",), bool, bool),
    "touch_cache_entry": (("key",), lambda _: None, lambda _: None),
    "delete_cache_entry": (("key",), _maybe(CacheEntry.to_dict), cache_from_dict),
    "set_cache_hit": (("job_id", "hit"), lambda _: None, lambda _: None),
    "record_cache_restores": (("job_id", "attempt", "results"), lambda _: None, lambda _: None),
    "record_cache_save": (("job_id", "attempt", "name", "saved", "size", "seconds"), lambda _: None, lambda _: None),
    "cache_entries_lru": (("repo",), lambda v: [e.to_dict() for e in v], lambda v: [cache_from_dict(e) for e in v]),
    "repo_cache_bytes": ((), dict, dict),
    "put_snapshot": (("record",), _maybe(SnapshotRecord.to_dict), snapshot_from_dict),
    "snapshot": (("job_id",), _maybe(SnapshotRecord.to_dict), snapshot_from_dict),
    "delete_snapshot": (("job_id", "key"), bool, bool),
    "get": (("job_id",), job_to_dict, job_from_dict),
    "put_artifact": (("record",), lambda v: [artifact_to_dict(v[0]), _records(v[1])],
                     lambda v: (artifact_from_dict(v[0]), [artifact_from_dict(r) for r in v[1]])),
    "forget_job_artifacts": (("job_id",), _records, lambda v: [artifact_from_dict(r) for r in v]),
    "delete_artifact": (("artifact_id",), bool, bool),
    "jobs_of_pipeline": (("pipeline_id",), lambda v: [job_to_dict(j) for j in v],
                         lambda v: [job_from_dict(j) for j in v]),
    "artifacts_of_jobs": (("job_ids",), lambda v: {str(k): artifact_to_dict(r) for k, r in v.items()},
                          lambda v: {int(k): artifact_from_dict(r) for k, r in v.items()}),
}

ARG_DECODERS: dict[str, Callable[[Any], Any]] = {
    "entry": cache_from_dict, "record": lambda d: snapshot_from_dict(d) if "failed_step" in d else artifact_from_dict(d),
    "paths": tuple, "job_ids": lambda v: [int(i) for i in v],
    "results": lambda v: [CacheResult(**r) for r in v],
}


def encode_arg(value: Any) -> Any:
    if isinstance(value, (CacheEntry, SnapshotRecord, CacheResult)):
        return value.to_dict()
    if isinstance(value, ArtifactRecord):
        return artifact_to_dict(value)
    if isinstance(value, (tuple, list)):
        return [encode_arg(item) for item in value]
    return value
