"""Values the HTTP API answers with, parsed leniently: unknown keys are ignored, missing ones defaulted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from client.errors import BadResponse

TERMINAL = frozenset({"success", "failure", "timeout", "cancelled", "skipped", "error"})
MIN_PRIORITY, MAX_PRIORITY = 0, 10
STATES = ("queued", "running", "success", "failure", "timeout", "cancelled", "skipped", "error")


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: object, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _str(value: object, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _object(data: object, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise BadResponse(f"expected {what} as a JSON object, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class StepInfo:
    """One step of a job's current attempt."""

    index: int
    name: str
    state: str
    exit_code: int | None = None
    started_at: float | None = None
    duration: float | None = None

    @classmethod
    def from_dict(cls, data: object) -> StepInfo:
        d = _object(data, "a step")
        code = d.get("exit_code")
        return cls(_int(d.get("index")), _str(d.get("name")), _str(d.get("state"), "running"),
                   code if isinstance(code, int) and not isinstance(code, bool) else None,
                   _float(d.get("started_at")), _float(d.get("duration")))


@dataclass(frozen=True)
class CacheInfo:
    """One cache entry of a job's latest attempt (`/jobs/status` `caches`): its restore and its save."""

    name: str
    result: str  # hit | fallback | miss
    key: str = ""
    restored_key: str | None = None
    size: int = 0
    seconds: float = 0.0
    saved: str | None = None  # None: not tried; saved | exists | empty | failed

    @classmethod
    def from_dict(cls, data: object) -> CacheInfo:
        d = _object(data, "a cache result")
        return cls(_str(d.get("name")), _str(d.get("result"), "miss"), _str(d.get("key")),
                   _optional_str(d.get("restored_key")), _int(d.get("size")), _float(d.get("seconds")) or 0.0,
                   _optional_str(d.get("saved")))

    @property
    def text(self) -> str:
        """`node hit`, `pip fallback from KEY`, `go miss`."""
        if self.result == "fallback" and self.restored_key:
            return f"{self.name} fallback from {self.restored_key}"
        return f"{self.name} {self.result}"


CACHE_WORDS = {"all": "hit", "some": "some hit", "none": "miss", None: "no restore"}


def cache_text(cache: str | None, caches: Sequence[CacheInfo]) -> str:
    """`hit`, `miss`, `no restore`, or with several entries `some hit (node hit, pip miss)`."""
    word = CACHE_WORDS.get(cache, "no restore")
    if len(caches) > 1:
        return f"{'all hit' if cache == 'all' else word} ({', '.join(c.text for c in caches)})"
    if len(caches) == 1 and caches[0].result == "fallback":
        return f"miss ({caches[0].text})"
    return word


@dataclass(frozen=True)
class JobInfo:
    """A job as `/jobs` and `/jobs/status` return it (runner.models.Job.to_dict), plus live step progress.

    `raw` is the JSON it was parsed from, for `--json` output that shows exactly what the server said.
    """

    id: int
    repo: str
    ref: str
    sha: str | None
    state: str
    priority: int
    attempts: int = 0
    event: str = ""
    queued_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    duration: float | None = None
    error: str | None = None
    cache_hit: bool | None = None  # every cache entry hit
    cache: str | None = None  # all | some | none of its cache entries hit; None: no restore
    caches: tuple[CacheInfo, ...] = ()  # each entry (from `/jobs/status`)
    cancel_requested: bool = False
    steps: tuple[StepInfo, ...] = ()
    snapshot: Mapping[str, Any] | None = None  # when the server reports one (workspace snapshots)
    step_index: int | None = None  # 0-based index of the step running now, from /events
    step_total: int | None = None  # steps in the pipeline, from /events (the API does not list them in advance)
    pipeline_id: int | None = None  # None: a job of no pipeline (or from a server before pipelines)
    name: str = ""  # its job in the pipeline file (`test`); a matrix's members share it
    display: str = ""  # the member's name (`test (python=3.12)`); the name without a matrix
    needs: tuple[str, ...] = ()
    waiting: bool = False  # queued, but its needs are not all done
    wait_reason: str | None = None  # why a queued job does not run yet (`/jobs?order=dispatch`, `/jobs/status`)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def cache_text(self) -> str:
        return cache_text(self.cache, self.caches)

    @classmethod
    def from_dict(cls, data: object) -> JobInfo:
        d = _object(data, "a job")
        spec = _object(d.get("spec", {}), "a job spec")
        if not isinstance(d.get("id"), int) or not isinstance(d.get("state"), str):
            raise BadResponse("a job without an integer id and a state")
        raw_steps = d.get("steps") or []
        steps = tuple(StepInfo.from_dict(s) for s in raw_steps) if isinstance(raw_steps, list) else ()
        cache_hit = d.get("cache_hit")
        cache = d.get("cache") if d.get("cache") in ("all", "some", "none") else None
        if cache is None and isinstance(cache_hit, bool):  # a server from before several caches per job
            cache = "all" if cache_hit else "none"
        raw_caches = d.get("caches")
        caches = tuple(CacheInfo.from_dict(c) for c in raw_caches if isinstance(c, Mapping)) \
            if isinstance(raw_caches, list) else ()
        snapshot = d.get("snapshot")
        sha = spec.get("sha")
        return cls(
            id=d["id"], repo=_str(spec.get("repo")), ref=_str(spec.get("ref")),
            sha=sha if isinstance(sha, str) else None, state=d["state"],
            priority=_int(spec.get("priority"), 5), attempts=_int(d.get("attempts")), event=_str(spec.get("event")),
            queued_at=_float(d.get("queued_at")) or 0.0, started_at=_float(d.get("started_at")),
            finished_at=_float(d.get("finished_at")), duration=_float(d.get("duration")),
            error=d.get("error") if isinstance(d.get("error"), str) else None,
            cache_hit=cache_hit if isinstance(cache_hit, bool) else None, cache=cache, caches=caches,
            cancel_requested=d.get("cancel_requested") is True, steps=steps,
            snapshot=snapshot if isinstance(snapshot, Mapping) else None,
            pipeline_id=d["pipeline_id"] if _is_int(d.get("pipeline_id")) else None, name=_str(d.get("name")),
            display=_str(d.get("display")) or _str(d.get("name")), needs=_strings(d.get("needs")),
            waiting=d.get("waiting") is True, wait_reason=_optional_str(d.get("wait_reason")), raw=d,
        )


PIPELINE_TERMINAL = frozenset({"success", "failure", "cancelled", "skipped", "error"})


def _ids(value: object) -> tuple[int, ...]:
    return tuple(v for v in value if _is_int(v)) if isinstance(value, list) else ()


@dataclass(frozen=True)
class Submission:
    """What `POST /jobs/submit` answered: the pipeline it made and its jobs, none yet while it is still planning
    (its repository could not be fetched in time; the server goes on trying)."""

    pipeline: int | None  # None: a server from before pipelines, which answers `{id}` alone
    jobs: tuple[int, ...]
    planning: bool = False

    @property
    def job(self) -> int | None:
        """The first job (a one-job pipeline's only one), or None while planning."""
        return self.jobs[0] if self.jobs else None

    @classmethod
    def from_dict(cls, data: object) -> Submission:
        d = _object(data, "a submit answer")
        pipeline = d.get("pipeline") if _is_int(d.get("pipeline")) else None
        jobs = _ids(d.get("jobs")) or ((d["id"],) if _is_int(d.get("id")) else ())
        if not jobs and pipeline is None:
            raise BadResponse("no job id and no pipeline id")
        return cls(pipeline, jobs, planning=not jobs)


@dataclass(frozen=True)
class PipelineJob:
    """A job as its pipeline's view (`/pipelines/{id}`) lists it: its place in the DAG and how it went."""

    id: int
    name: str
    display: str
    state: str
    needs: tuple[str, ...] = ()
    depth: int = 0  # 0 without needs, else 1 + the deepest of its needs: its column in a drawing of the DAG
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    duration: float | None = None
    attempts: int = 0
    waiting: bool = False
    wait_reason: str | None = None  # why a queued job does not run yet
    cancel_requested: bool = False  # the API's job list leaves it out; a job event says it (`cancel_requested`)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def cache_text(self) -> str:
        return cache_text(self.cache, self.caches)

    @classmethod
    def from_dict(cls, data: object) -> PipelineJob:
        d = _object(data, "a pipeline's job")
        if not _is_int(d.get("id")) or not isinstance(d.get("state"), str):
            raise BadResponse("a pipeline's job without an integer id and a state")
        name = _str(d.get("name"))
        return cls(d["id"], name, _str(d.get("display")) or name, d["state"], _strings(d.get("needs")),
                   _int(d.get("depth")), _optional_str(d.get("error")), _float(d.get("started_at")),
                   _float(d.get("finished_at")), _float(d.get("duration")), _int(d.get("attempts")),
                   d.get("waiting") is True, _optional_str(d.get("wait_reason")), d.get("cancel_requested") is True)


@dataclass(frozen=True)
class PipelineInfo:
    """A pipeline as `/pipelines` lists it and `/pipelines/{id}` shows it (with its `jobs`, in plan order).

    `raw` is the JSON it was parsed from, for `--json` output.
    """

    id: int
    state: str
    job_ids: tuple[int, ...] = ()
    error: str | None = None
    sha: str | None = None
    plan_attempts: int = 0
    repo: str = ""
    ref: str = ""
    event: str = ""
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    jobs_total: int = 0
    jobs_done: int = 0
    duration: float | None = None  # end to end, first job queued -> last job done; None until it ends
    cancel_requested: bool = False  # cancelled while jobs ran: it ends once they have stopped
    jobs: tuple[PipelineJob, ...] = ()  # only from `/pipelines/{id}`
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def terminal(self) -> bool:
        return self.state in PIPELINE_TERMINAL

    @classmethod
    def from_dict(cls, data: object) -> PipelineInfo:
        d = _object(data, "a pipeline")
        if not _is_int(d.get("id")) or not isinstance(d.get("state"), str):
            raise BadResponse("a pipeline without an integer id and a state")
        job_ids = _ids(d.get("job_ids"))
        raw_jobs = d.get("jobs")
        jobs = tuple(PipelineJob.from_dict(j) for j in raw_jobs) if isinstance(raw_jobs, list) else ()
        return cls(d["id"], d["state"], job_ids, _optional_str(d.get("error")), _optional_str(d.get("sha")),
                   _int(d.get("plan_attempts")), _str(d.get("repo")), _str(d.get("ref")), _str(d.get("event")),
                   _float(d.get("created_at")), _float(d.get("started_at")), _float(d.get("finished_at")),
                   _int(d.get("jobs_total"), len(job_ids)), _int(d.get("jobs_done")), _float(d.get("duration")),
                   d.get("cancel_requested") is True, jobs, d)


def _page(data: object, noun: str, key: str) -> tuple[list[object], str | None]:
    """A list page of the API: its items under `key`, and the next page's cursor (None on the last)."""
    d = _object(data, f"a {noun} list")
    items = d.get(key)
    if not isinstance(items, list):
        raise BadResponse(f"a {noun} list without `{key}`")
    cursor = d.get("next_cursor")
    return items, cursor if isinstance(cursor, str) else None


@dataclass(frozen=True)
class PipelinePage:
    """One page of `/pipelines` and the cursor of the next, None on the last."""

    pipelines: tuple[PipelineInfo, ...]
    next_cursor: str | None

    @classmethod
    def from_dict(cls, data: object) -> PipelinePage:
        items, cursor = _page(data, "pipeline", "pipelines")
        return cls(tuple(PipelineInfo.from_dict(p) for p in items), cursor)


@dataclass(frozen=True)
class JobPage:
    """One page of `/jobs` and the cursor of the next, None on the last."""

    jobs: tuple[JobInfo, ...]
    next_cursor: str | None

    @classmethod
    def from_dict(cls, data: object) -> JobPage:
        items, cursor = _page(data, "job", "jobs")
        return cls(tuple(JobInfo.from_dict(j) for j in items), cursor)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One line of a job's log as `/jobs/logs` streams it; `n` counts from 1 across attempts."""

    n: int
    step: str
    stream: str  # stdout | stderr | system
    text: str  # may hold ANSI colour sequences

    @classmethod
    def from_dict(cls, data: object) -> LogEntry:
        d = _object(data, "a log line")
        if not isinstance(d.get("n"), int) or not isinstance(d.get("text"), str):
            raise BadResponse("a log line without `n` and `text`")
        return cls(d["n"], _str(d.get("step")), _str(d.get("stream"), "stdout"), d["text"])


@dataclass(frozen=True)
class LogEnd:
    """The log stream's last event: the job is over and every line was sent."""

    state: str | None
    last: int


@dataclass(frozen=True)
class ServerEvent:
    """One `/events` event: a job changed state or moved to another step (runner.events.JobEvent)."""

    job_id: int
    state: str
    kind: str = "state"  # state | step | step_done | cancel_requested | priority | sha
    data: Mapping[str, Any] = field(default_factory=dict)
    t: float = 0.0

    @classmethod
    def from_dict(cls, data: object) -> ServerEvent:
        d = _object(data, "an event")
        if not isinstance(d.get("job_id"), int) or not isinstance(d.get("state"), str):
            raise BadResponse("an event without `job_id` and `state`")
        extra = d.get("data")
        return cls(d["job_id"], d["state"], _str(d.get("kind"), "state"),
                   dict(extra) if isinstance(extra, Mapping) else {}, _float(d.get("t")) or 0.0)


@dataclass(frozen=True)
class PipelineServerEvent:
    """One `/events` event of kind `pipeline`: a pipeline changed state (data.jobs once planned, data.error)."""

    pipeline_id: int
    state: str
    data: Mapping[str, Any] = field(default_factory=dict)
    t: float = 0.0

    @classmethod
    def from_dict(cls, data: object) -> PipelineServerEvent:
        d = _object(data, "a pipeline event")
        if not _is_int(d.get("pipeline_id")) or not isinstance(d.get("state"), str):
            raise BadResponse("a pipeline event without `pipeline_id` and `state`")
        extra = d.get("data")
        return cls(d["pipeline_id"], d["state"], dict(extra) if isinstance(extra, Mapping) else {},
                   _float(d.get("t")) or 0.0)


@dataclass(frozen=True)
class Metrics:
    """`/metrics?range=`: the headline numbers of a range and the average duration per time slice."""

    range: str
    jobs: int
    by_state: Mapping[str, int]
    success_rate: float | None
    avg_duration: float | None
    p95_duration: float | None
    cache_hit_rate: float | None
    queue_depth: int
    running: int
    durations: tuple[float, ...]  # average duration of each slice, oldest first; 0 for slices without jobs
    pipelines: int = 0  # pipelines finished in the range
    pipeline_by_state: Mapping[str, int] = field(default_factory=dict)
    pipeline_success_rate: float | None = None  # success among success, failure and error
    pipeline_avg_duration: float | None = None  # end to end: first job queued -> last job done
    pipeline_p95_duration: float | None = None

    @classmethod
    def from_dict(cls, data: object) -> Metrics:
        d = _object(data, "metrics")
        buckets = d.get("buckets") if isinstance(d.get("buckets"), list) else []
        durations = tuple(_float(_object(b, "a bucket").get("avg_duration")) or 0.0 for b in buckets)
        p = d.get("pipelines") if isinstance(d.get("pipelines"), Mapping) else {}
        return cls(_str(d.get("range")), _int(d.get("jobs")), _counts(d.get("by_state")),
                   _float(d.get("success_rate")), _float(d.get("avg_duration")), _float(d.get("p95_duration")),
                   _float(d.get("cache_hit_rate")), _int(d.get("queue_depth")), _int(d.get("running")), durations,
                   _int(p.get("total")), _counts(p.get("by_state")), _float(p.get("success_rate")),
                   _float(p.get("avg_duration")), _float(p.get("p95_duration")))


@dataclass(frozen=True)
class CacheEntry:
    """One dependency-cache archive in the store."""

    key: str
    repo: str
    size: int
    hits: int
    created_at: float | None
    last_used: float | None

    @classmethod
    def from_dict(cls, data: object) -> CacheEntry:
        d = _object(data, "a cache entry")
        if not isinstance(d.get("key"), str):
            raise BadResponse("a cache entry without a `key`")
        return cls(d["key"], _str(d.get("repo")), _int(d.get("size")), _int(d.get("hits")),
                   _float(d.get("created_at")), _float(d.get("last_used")))


@dataclass(frozen=True)
class CacheStats:
    """`/cache/stats`: the entries, their total size and the hit rate."""

    entries: tuple[CacheEntry, ...]
    total_size: int
    hit_rate: float | None

    @classmethod
    def from_dict(cls, data: object) -> CacheStats:
        """Entries under `entries` (or `items`); totals at the top or in a `totals`/`stats` object."""
        d = _object(data, "cache stats")
        raw = d.get("entries") if isinstance(d.get("entries"), list) else d.get("items")
        entries = tuple(CacheEntry.from_dict(e) for e in raw) if isinstance(raw, list) else ()
        sources = [d] + [d[k] for k in ("totals", "stats") if isinstance(d.get(k), Mapping)]
        total = next((s[k] for s in sources for k in ("total_size", "bytes", "size") if _is_int(s.get(k))), None)
        rate = next((_float(s["hit_rate"]) for s in sources if _float(s.get("hit_rate")) is not None), None)
        return cls(entries, total if total is not None else sum(e.size for e in entries), rate)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _strings(value: object) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _counts(value: object) -> dict[str, int]:
    return {k: v for k, v in value.items() if _is_int(v)} if isinstance(value, Mapping) else {}
