"""The console's view of pipelines: the API's pipeline answers parsed leniently, the calls, and pipeline events."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from client.api import Client
from client.errors import BadResponse
from client.models import TERMINAL, ServerEvent

# The calls below go through Client.request, the client's public plumbing, and parse what the API contract of
# issue 14 promises (GET /pipelines, GET /pipelines/{id}, POST /pipelines/{id}/cancel|retry). They carry the names
# and signatures the client package is getting (Client.pipelines, .pipeline, .cancel_pipeline, .retry_pipeline), so
# that once it has them this class can hand over to it without the views changing.

PIPELINE_STATES = ("planning", "queued", "running", "success", "failure", "cancelled", "error")
PIPELINE_TERMINAL = frozenset({"success", "failure", "cancelled", "error"})
RETRYABLE_JOB_STATES = frozenset({"failure", "timeout", "error", "cancelled"})


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: object, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _str(value: object, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _object(data: object, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise BadResponse(f"unexpected answer from the server: expected {what} as a JSON object")
    return data


@dataclass(frozen=True)
class PipelineJob:
    """One job of a pipeline as `GET /pipelines/{id}` lists it: where it sits in the graph and how it is doing."""

    id: int
    name: str
    display: str  # the matrix member's name, `test (python=3.12)`; the name without a matrix
    state: str
    needs: tuple[str, ...] = ()
    depth: int = 0  # 0 for a job without needs, else 1 + the deepest of its needs
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    duration: float | None = None
    attempts: int = 0
    waiting: bool = False  # queued, but its needs are not all done
    wait_reason: str | None = None  # why a queued job waits: needs, concurrency group, max_parallel, no free slot
    cancel_requested: bool = False

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @classmethod
    def from_dict(cls, data: object) -> PipelineJob:
        d = _object(data, "a pipeline's job")
        if not isinstance(d.get("id"), int) or not isinstance(d.get("state"), str):
            raise BadResponse("unexpected answer from the server: a pipeline's job without an id and a state")
        name = _str(d.get("name")) or f"job {d['id']}"
        needs = d.get("needs")
        return cls(
            id=d["id"], name=name, display=_str(d.get("display")) or name, state=d["state"],
            needs=tuple(n for n in needs if isinstance(n, str)) if isinstance(needs, list) else (),
            depth=_int(d.get("depth"), -1), error=_opt_str(d.get("error")), started_at=_float(d.get("started_at")),
            finished_at=_float(d.get("finished_at")), duration=_float(d.get("duration")),
            attempts=_int(d.get("attempts")), waiting=d.get("waiting") is True,
            wait_reason=_opt_str(d.get("wait_reason")), cancel_requested=d.get("cancel_requested") is True,
        )


@dataclass(frozen=True)
class Pipeline:
    """A pipeline as `GET /pipelines` lists it; `GET /pipelines/{id}` adds its `jobs`."""

    id: int
    repo: str
    ref: str
    state: str
    sha: str | None = None
    event: str = ""
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    job_ids: tuple[int, ...] = ()
    jobs_total: int = 0
    jobs_done: int = 0
    duration: float | None = None
    cancel_requested: bool = False
    jobs: tuple[PipelineJob, ...] = ()  # only in a single pipeline's answer
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def terminal(self) -> bool:
        return self.state in PIPELINE_TERMINAL

    @classmethod
    def from_dict(cls, data: object) -> Pipeline:
        d = _object(data, "a pipeline")
        if not isinstance(d.get("id"), int) or not isinstance(d.get("state"), str):
            raise BadResponse("unexpected answer from the server: a pipeline without an id and a state")
        spec = d.get("spec") if isinstance(d.get("spec"), Mapping) else {}
        ids = d.get("job_ids")
        job_ids = tuple(i for i in ids if _is_id(i)) if isinstance(ids, list) else ()
        raw_jobs = d.get("jobs")
        jobs = with_depths([PipelineJob.from_dict(j) for j in raw_jobs]) if isinstance(raw_jobs, list) else ()
        sha = _opt_str(d.get("sha")) or _opt_str(spec.get("sha"))
        return cls(
            id=d["id"], repo=_str(d.get("repo")) or _str(spec.get("repo")),
            ref=_str(d.get("ref")) or _str(spec.get("ref")), state=d["state"], sha=sha, event=_str(d.get("event")) or _str(spec.get("event")),
            created_at=_float(d.get("created_at")) or 0.0, started_at=_float(d.get("started_at")),
            finished_at=_float(d.get("finished_at")), error=_opt_str(d.get("error")), job_ids=job_ids,
            jobs_total=_int(d.get("jobs_total"), len(job_ids or jobs)), jobs_done=_int(d.get("jobs_done")),
            duration=_float(d.get("duration")), cancel_requested=d.get("cancel_requested") is True, jobs=jobs, raw=d,
        )


def with_depths(jobs: Sequence[PipelineJob]) -> tuple[PipelineJob, ...]:
    """The jobs with a depth each: the server's, or (from a server that leaves it out) worked out from `needs`."""
    if all(job.depth >= 0 for job in jobs):
        return tuple(jobs)
    by_name: dict[str, list[PipelineJob]] = {}
    for job in jobs:
        by_name.setdefault(job.name, []).append(job)
    depth: dict[str, int] = {}

    def of(name: str, seen: frozenset[str]) -> int:
        if name not in depth:
            needs = {n for j in by_name.get(name, []) for n in j.needs if n in by_name and n not in seen}
            depth[name] = 1 + max((of(n, seen | {name}) for n in needs), default=-1)  # seen: a cycle cannot hang us
        return depth[name]

    return tuple(job if job.depth >= 0 else replace(job, depth=of(job.name, frozenset())) for job in jobs)


def apply_job_event(job: PipelineJob, event: ServerEvent) -> PipelineJob:
    """The pipeline's job as a job event leaves it, before the screen asks the server again (for wait reasons)."""
    if event.kind == "cancel_requested":
        return replace(job, cancel_requested=True)
    if event.kind == "ready":  # its needs are done: it waits only for a slot now
        return replace(job, waiting=False)
    if event.kind != "state" or event.state == job.state:
        return job
    if event.state == "running":
        return replace(job, state="running", started_at=event.t, finished_at=None, duration=None, waiting=False,
                       wait_reason=None, attempts=_int(event.data.get("attempts"), job.attempts))
    if event.state == "queued":
        return replace(job, state="queued", started_at=None, finished_at=None, duration=None, error=None)
    error = event.data.get("error")
    return replace(job, state=event.state, finished_at=event.t, waiting=False, wait_reason=None,
                   cancel_requested=False, error=error if isinstance(error, str) else job.error,
                   duration=None if job.started_at is None else max(0.0, event.t - job.started_at))


@dataclass(frozen=True)
class PipelinePage:
    """One page of `GET /pipelines`, newest first, and the cursor of the next (None on the last)."""

    pipelines: tuple[Pipeline, ...]
    next_cursor: str | None

    @classmethod
    def from_dict(cls, data: object) -> PipelinePage:
        d = _object(data, "a pipeline list")
        items = d.get("pipelines")
        if not isinstance(items, list):
            raise BadResponse("unexpected answer from the server: a pipeline list without `pipelines`")
        cursor = d.get("next_cursor")
        return cls(tuple(Pipeline.from_dict(p) for p in items), cursor if isinstance(cursor, str) else None)


@dataclass(frozen=True)
class Retried:
    """What `POST /pipelines/{id}/retry` made: the pipeline that runs (a new one, or the same for failed only)
    and the jobs it queued."""

    pipeline_id: int
    job_ids: tuple[int, ...]

    @classmethod
    def from_dict(cls, data: object, asked: int) -> Retried:
        d = _object(data, "a retry answer")
        pipeline = d.get("pipeline")
        pipeline_id = _int(pipeline.get("id") if isinstance(pipeline, Mapping) else pipeline, asked)
        jobs = d.get("jobs") if isinstance(d.get("jobs"), list) else []
        ids = [j.get("id") if isinstance(j, Mapping) else j for j in jobs]
        return cls(pipeline_id, tuple(i for i in ids if _is_id(i)))


@dataclass(frozen=True)
class PipelineEvent:
    """A pipeline changed state (`/events` event `pipeline`): `{pipeline_id, state, kind, data, t}`."""

    pipeline_id: int
    state: str
    kind: str = "pipeline"
    data: Mapping[str, Any] = field(default_factory=dict)
    t: float = 0.0


def as_pipeline_event(event: object) -> PipelineEvent | None:
    """The event as a pipeline event, or None for a job event. It reads attributes, not a class, so that it takes
    whatever the client's event stream yields for `event: pipeline` (a `pipeline_id` and no job of its own)."""
    pipeline_id, state = getattr(event, "pipeline_id", None), getattr(event, "state", None)
    if isinstance(event, PipelineEvent):
        return event
    if not isinstance(pipeline_id, int) or isinstance(pipeline_id, bool) or not isinstance(state, str):
        return None
    if isinstance(getattr(event, "job_id", None), int) and getattr(event, "kind", "") != "pipeline":
        return None  # a job's event that names its pipeline: it stays a job event
    data = getattr(event, "data", None)
    return PipelineEvent(pipeline_id, state, "pipeline", dict(data) if isinstance(data, Mapping) else {},
                         _float(getattr(event, "t", None)) or 0.0)


def pipeline_named(event: object) -> int | None:
    """The pipeline a job event names in its data (planned, or its failed jobs retried), if it names one."""
    data = getattr(event, "data", None)
    value = data.get("pipeline") if isinstance(data, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class PipelineApi:
    """The pipeline calls of the API, over one Client."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def pipelines(self, status: str | None = None, repo: str | None = None, limit: int = 50,
                        cursor: str | None = None) -> PipelinePage:
        """One page of pipelines, newest first."""
        params = {"limit": str(limit)}
        for key, value in (("status", status), ("repo", repo), ("cursor", cursor)):
            if value:
                params[key] = value
        return PipelinePage.from_dict(await self.client.request("GET", "/pipelines", params=params))

    async def pipeline(self, pipeline_id: int) -> Pipeline:
        """The pipeline with its jobs."""
        return Pipeline.from_dict(await self.client.request("GET", f"/pipelines/{pipeline_id}"))

    async def cancel_pipeline(self, pipeline_id: int) -> str:
        """Cancel the pipeline; the state it is in now (running while its running jobs stop)."""
        answer = await self.client.request("POST", f"/pipelines/{pipeline_id}/cancel")
        return _str(answer.get("state")) if isinstance(answer, Mapping) else ""

    async def retry_pipeline(self, pipeline_id: int, failed_only: bool = False) -> Retried:
        """Run a finished pipeline again: a new pipeline at the same sha, or (failed_only) its failed jobs and the
        ones skipped because of them, in the same pipeline."""
        answer = await self.client.request("POST", f"/pipelines/{pipeline_id}/retry",
                                           body={"failed_only": failed_only})
        return Retried.from_dict(answer, pipeline_id)
