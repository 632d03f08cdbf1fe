"""A job's row: the columns every job query reads, and the Job (and the JSON columns) they decode to and from."""

from __future__ import annotations

import json
from typing import Any

from config.errors import ConfigError, ConfigIssue
from runner.models import CACHE_SUMMARY, Job, JobSpec, JobState, StepRecord

JOB_COLUMNS = (
    "id, repo, ref, sha, event, priority, concurrency_group, fork, pr_number, base_ref, pipeline, env, meta,"
    " state, attempts, runner_id, lease_expires, cancel_requested, queued_at, started_at, finished_at, error,"
    " cache_hit, seq, pipeline_id, name, display, needs, blocked"
)

COL = {name.strip(): i for i, name in enumerate(JOB_COLUMNS.split(","))}  # position in a job row
_STATES = {state.value: state for state in JobState}  # JobState(value) without the enum call


def job_of(row: tuple[Any, ...], steps: tuple[StepRecord, ...] = ()) -> Job:
    (job_id, repo, ref, sha, event, priority, group, fork, pr_number, base_ref, pipeline, env, meta,
     state, attempts, runner_id, lease_expires, cancel_requested, queued_at, started_at, finished_at, error,
     cache_hit, _seq, pipeline_id, name, display, needs, blocked) = row
    spec = JobSpec._stored(
        repo=repo, ref=ref, sha=sha, event=event, priority=priority, concurrency_group=group, fork=bool(fork),
        pr_number=pr_number, base_ref=base_ref, pipeline=None if pipeline is None else json.loads(pipeline),
        env=json.loads(env) if env != "{}" else {}, meta=json.loads(meta) if meta != "{}" else {},
    )
    return Job._stored(
        id=job_id, spec=spec, state=_STATES[state], attempts=attempts, runner_id=runner_id,
        lease_expires=lease_expires, cancel_requested=bool(cancel_requested), queued_at=queued_at,
        started_at=started_at, finished_at=finished_at, error=error,
        cache_hit=None if cache_hit is None else cache_hit == 1, cache=CACHE_SUMMARY.get(cache_hit), steps=steps,
        pipeline_id=pipeline_id,
        name=name, display=display, needs=tuple(json.loads(needs)) if needs != "[]" else (), waiting=bool(blocked),
    )


def spec_json(value: Any, key: str) -> str:
    """A spec's JSON column (pipeline, env, meta); a value JSON cannot hold is the submitter's ConfigError."""
    if not value:
        return "{}"
    try:
        return json.dumps(value)  # default arguments: json's cached encoder, twice as fast as a new one
    except (TypeError, ValueError) as exc:
        raise ConfigError(ConfigIssue("job spec", key, f"not JSON-serialisable: {exc}")) from exc


def bad_request(key: str, expected: str, got: object) -> ConfigError:
    return ConfigError(ConfigIssue("request", key, f"expected {expected}, got {got!r}"))


