"""Values of the job queue: job and step states, what gets enqueued (JobSpec), a job as stored (Job, StepRecord)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

import orjson

from config.errors import ConfigError, ConfigIssue

MIN_PRIORITY = 0
MAX_PRIORITY = 10
DEFAULT_PRIORITY = 5


class JobState(StrEnum):
    """Where a job is in its life: queued -> running -> one of the terminal states."""

    queued = "queued"
    running = "running"
    success = "success"
    failure = "failure"
    timeout = "timeout"
    cancelled = "cancelled"
    skipped = "skipped"
    error = "error"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL: frozenset[JobState] = frozenset(JobState) - {JobState.queued, JobState.running}


class StepState(StrEnum):
    """Where one step of an attempt is: running, then how it ended. The values are the ones stored and shown
    (the steps table, the API, the dashboard), and the shared ones spell the job states they lead to."""

    running = "running"
    success = "success"
    failure = "failure"  # exited non-zero (with continue_on_error the job goes on)
    timeout = "timeout"  # over its own limit or the job's
    cancelled = "cancelled"
    restored = "restored"  # a retry from the failed step took this step's work from a snapshot, not run again


STEP_ENDS: frozenset[StepState] = frozenset(StepState) - {StepState.running}  # how a step can end


def valid_priority(priority: object) -> bool:
    """True for an int (not a bool) in 0..10."""
    return isinstance(priority, int) and not isinstance(priority, bool) and MIN_PRIORITY <= priority <= MAX_PRIORITY


def _is_text(value: str) -> bool:
    """Whether SQLite can store it: JSON's \\u escapes can make lone surrogates, which UTF-8 cannot encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_str_map(value: object) -> bool:
    return isinstance(value, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _plainly_valid(values: dict[str, Any]) -> bool:
    """A spec as webhooks and the API make them, vouched for in one quick pass: ASCII text, exact types. False
    says nothing (non-ASCII text, a subclass, a bad value): JobSpec._check then looks at every field."""
    for key in ("repo", "ref", "event"):
        text = values[key]
        if type(text) is not str or not text or not text.isascii():
            return False
    for key in ("sha", "concurrency_group", "base_ref"):
        text = values[key]
        if text is not None and (type(text) is not str or not text.isascii()):
            return False
    priority, pr_number, pipeline = values["priority"], values["pr_number"], values["pipeline"]
    return (type(priority) is int and MIN_PRIORITY <= priority <= MAX_PRIORITY and type(values["fork"]) is bool
            and (pr_number is None or type(pr_number) is int and 0 <= pr_number < 2**63)
            and (pipeline is None or type(pipeline) is dict)
            and _is_plain_str_map(values["env"]) and _is_plain_str_map(values["meta"]))


def _is_plain_str_map(value: object) -> bool:
    if type(value) is not dict:
        return False
    for key, item in value.items():
        if type(key) is not str or type(item) is not str:
            return False
    return True


@dataclass(frozen=True)
class JobSpec:
    """What gets enqueued: everything decided at enqueue time from the event and the server settings."""

    repo: str  # clone URL or local path
    ref: str
    sha: str | None = None
    event: str = "manual"  # push, pull_request, tag, schedule, manual (older rows: api, local = manual)
    priority: int = DEFAULT_PRIORITY  # 0..10, higher runs first
    concurrency_group: str | None = None  # at most one running job per group
    fork: bool = False
    pr_number: int | None = None
    base_ref: str | None = None
    pipeline: dict[str, Any] | None = None  # inline pipeline from the API; None = read .forgeci.toml after clone
    env: Mapping[str, str] = field(default_factory=dict)
    meta: Mapping[str, str] = field(default_factory=dict)  # pusher, commit message, delivery id, forge, ...

    def __post_init__(self) -> None:
        values = self.__dict__
        if not _plainly_valid(values):
            self._check()
        # A private copy: a caller mutating its dict later must not change an enqueued spec.
        values["env"], values["meta"] = dict(values["env"]), dict(values["meta"])

    def _check(self) -> None:
        """Every field checked, ConfigError naming each bad one (a spec _plainly_valid did not vouch for)."""
        issues: list[ConfigIssue] = []

        def bad(key: str, expected: str) -> None:
            issues.append(ConfigIssue("job spec", key, f"expected {expected}, got {getattr(self, key)!r}"))

        for key in ("repo", "ref", "event"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                bad(key, "a non-empty string")
        for key in ("sha", "concurrency_group", "base_ref"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                bad(key, "a string or null")
        for key in ("repo", "ref", "sha", "event", "concurrency_group", "base_ref"):
            if isinstance(getattr(self, key), str) and not _is_text(getattr(self, key)):
                bad(key, "Unicode text (a lone surrogate cannot be stored)")
        if not valid_priority(self.priority):
            bad("priority", f"an integer {MIN_PRIORITY}..{MAX_PRIORITY}")
        if not isinstance(self.fork, bool):
            bad("fork", "true or false")
        if self.pr_number is not None and (isinstance(self.pr_number, bool) or not isinstance(self.pr_number, int)
                                           or not 0 <= self.pr_number < 2**63):  # SQLite's INTEGER range
            bad("pr_number", "an integer 0..2^63-1 or null")
        if self.pipeline is not None and not isinstance(self.pipeline, dict):
            bad("pipeline", "a table or null")
        for key in ("env", "meta"):
            if not _is_str_map(getattr(self, key)):
                bad(key, "a table of strings")
        if issues:
            raise ConfigError(issues)

    @classmethod
    def _stored(cls, **values: Any) -> JobSpec:
        """Rebuild a spec the queue validated when it was enqueued, without validating it again (claim's hot path)."""
        spec = object.__new__(cls)
        spec.__dict__.update(values)  # a frozen dataclass refuses setattr, not its __dict__
        return spec

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return {f.name: (dict(v) if isinstance(v := getattr(self, f.name), Mapping) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        """Build from a dict such as to_dict's; unknown or missing keys raise ConfigError."""
        if not isinstance(data, Mapping):
            raise ConfigError(ConfigIssue("job spec", "", f"expected a JSON object, got {type(data).__name__}"))
        known = {f.name for f in fields(cls)}
        issues = [ConfigIssue("job spec", k, "unknown key") for k in data if k not in known]
        issues += [ConfigIssue("job spec", k, "missing") for k in ("repo", "ref") if k not in data]
        if issues:
            raise ConfigError(issues)
        return cls(**data)

    def to_json(self) -> str:
        """The spec as JSON (sorted keys, compact), made once per spec: a webhook's delivery checks it before its
        transaction and stores it in it. A spec with an inline pipeline (the caller's dict) is encoded anew."""
        text: str | None = self.__dict__.get("_json")
        if text is None:
            text = self._dumps()
            if self.pipeline is None:
                self.__dict__["_json"] = text  # not a field: equality, repr and to_dict do not see it
        return text

    def _dumps(self) -> str:
        if self.pipeline is None:
            try:  # orjson: a fifth of json.dumps's time; the same JSON but for non-ASCII text, kept as UTF-8
                return orjson.dumps({f: self.__dict__[f] for f in _SPEC_FIELDS}, option=orjson.OPT_SORT_KEYS).decode()
            except TypeError:
                pass  # lone surrogates (JSON allows them in a forge's text): json escapes them
        try:
            return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)
        except (TypeError, ValueError) as exc:  # only the free-form pipeline can hold non-JSON values
            raise ConfigError(ConfigIssue("job spec", "pipeline", f"not JSON-serialisable: {exc}")) from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> JobSpec:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(ConfigIssue("job spec", "", f"invalid JSON: {exc}")) from exc
        return cls.from_dict(data)


_SPEC_FIELDS = tuple(f.name for f in fields(JobSpec))


@dataclass(frozen=True)
class StepRecord:
    """One step of a job's current attempt, with times from the queue's clock."""

    index: int
    name: str
    state: StepState
    exit_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    duration: float | None = None  # seconds; None while the step runs

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Job:
    """A job as stored in the queue: its spec plus where it is in its life."""

    id: int
    spec: JobSpec
    state: JobState
    attempts: int = 0  # claims so far; the first claim makes it 1
    runner_id: str | None = None
    lease_expires: float | None = None
    cancel_requested: bool = False
    queued_at: float = 0.0
    started_at: float | None = None  # of the current (or last) attempt
    finished_at: float | None = None
    error: str | None = None
    cache_hit: bool | None = None  # every cache entry hit; None: no cache restore was attempted (yet)
    cache: str | None = None  # "all" | "some" | "none" of its entries hit (CACHE_SUMMARY); None: no restore
    steps: tuple[StepRecord, ...] = ()
    pipeline_id: int | None = None  # None: a job of no pipeline (submitted to the queue directly)
    name: str | None = None  # the pipeline's job key (`test`); every member of a matrix shares it
    display: str | None = None  # the member's display name (`test (python=3.12)`); the name without a matrix
    needs: tuple[str, ...] = ()  # names of the jobs it waits for
    waiting: bool = False  # queued, but its needs are not all done yet

    @classmethod
    def _stored(cls, **values: Any) -> Job:
        """A job read back from the queue, every field given, without the frozen dataclass's per-field setattr."""
        job = object.__new__(cls)
        job.__dict__.update(values)
        return job

    @property
    def duration(self) -> float | None:
        """Seconds from the last attempt's start to its end; None until both are known."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict, as the HTTP API returns it."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["spec"] = self.spec.to_dict()
        out["steps"] = [s.to_dict() for s in self.steps]
        out["needs"] = list(self.needs)
        out["duration"] = self.duration
        return out


@dataclass(frozen=True)
class StepResult:
    """How one step of an attempt ended."""

    index: int
    name: str
    state: StepState
    exit_code: int | None
    duration: float


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended; `infra` means the queue should retry it rather than record `state`."""

    state: JobState
    error: str | None = None
    infra: bool = False
    steps: tuple[StepResult, ...] = ()
    outputs: Mapping[str, str] | None = None  # KEY=VALUE lines its steps wrote to $FORGECI_OUTPUT


@dataclass(frozen=True)
class JobMetric:
    """The metrics row of one finished job: its outcome, total and per-step durations, cache result."""

    job_id: int
    finished_at: float
    state: JobState
    duration: float | None  # seconds of the last attempt; None when it never started
    steps: int
    step_times: tuple[tuple[str, float | None], ...]  # (name, seconds) in step order
    cache_hit: bool | None


@dataclass(frozen=True)
class BucketStats:
    """Finished jobs in one slice of a time range: how many ended in each state, and how long they took."""

    start: float
    states: Mapping[str, int]
    avg_duration: float | None
    max_duration: float | None

    @property
    def total(self) -> int:
        return sum(self.states.values())


@dataclass(frozen=True)
class RangeStats:
    """Aggregates over the jobs that finished in [since, until), with `buckets` equal slices for charts."""

    since: float
    until: float
    states: Mapping[str, int]  # finished jobs per terminal state (every terminal state present)
    avg_duration: float | None
    p95_duration: float | None
    cache_hits: int  # cache entries restored as exact hits
    cache_lookups: int  # cache entries whose restore was attempted (a job of two entries counts two)
    bucket_seconds: float
    buckets: tuple[BucketStats, ...]
    cache_results: Mapping[str, int] = field(default_factory=dict)  # entries per result: hit, fallback, miss

    @property
    def total(self) -> int:
        return sum(self.states.values())


@dataclass(frozen=True)
class CacheResult:
    """What one cache entry of a job's attempt did: its restore (hit, fallback from which key, miss), then its save."""

    name: str
    key: str  # the entry's own key
    result: str  # "hit" | "fallback" | "miss"
    restored_key: str | None = None  # the entry restored: the key itself for a hit, another one for a fallback
    size: int = 0  # bytes of the restored archive
    seconds: float = 0.0  # how long the restore took
    saved: str | None = None  # None: no save tried; "saved" | "exists" | "empty" | "failed"
    saved_size: int | None = None
    save_seconds: float | None = None
    attempt: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


CACHE_SUMMARY = {1: "all", 2: "some", 0: "none"}  # jobs.cache_hit: every entry hit, some did, none did


@dataclass(frozen=True)
class CacheEntry:
    """One saved cache (runner.cache): immutable once saved; hits and last_used change as jobs restore it."""

    key: str  # {repo}/{scope}/{hash}
    repo: str
    scope: str
    image: str
    paths: tuple[str, ...]
    object: str  # the store key of its archive
    size: int  # bytes of the archive
    checksum: str  # sha256 of the archive
    created_at: float
    last_used: float
    hits: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["paths"] = list(self.paths)
        return out


@dataclass(frozen=True)
class SnapshotRecord:
    """A job's workspace snapshot (runner.snapshot): where it is, and which step failed the job."""

    job_id: int
    key: str  # snapshots/{jobId}/{sha}/{timestamp}.tar.zst
    sha: str
    image: str
    state: JobState  # the job's outcome when the snapshot was taken
    failed_step: int | None  # index of the step that failed the job; None when none did
    failed_step_name: str | None
    size: int
    checksum: str
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class PipelineState(StrEnum):
    """Where a pipeline is: planning (its jobs not written yet) -> queued -> running -> a terminal state."""

    planning = "planning"
    queued = "queued"
    running = "running"
    success = "success"
    failure = "failure"
    cancelled = "cancelled"
    skipped = "skipped"  # every job ruled out by its filters (events, paths, paths_ignore): nothing ran
    error = "error"  # planning failed for good (the repository could not be fetched)

    @property
    def is_terminal(self) -> bool:
        return self not in (PipelineState.planning, PipelineState.queued, PipelineState.running)


@dataclass(frozen=True)
class PipelineRecord:
    """A pipeline as stored: what triggered it (`spec`, which every job inherits), the sha it pins, its state."""

    id: int
    repo: str
    ref: str
    sha: str | None
    event: str
    spec: JobSpec
    state: PipelineState
    concurrency_group: str | None = None
    cancel_requested: bool = False
    plan_attempts: int = 0
    plan_after: float = 0.0
    error: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    job_ids: tuple[int, ...] = ()
    jobs_done: int = 0  # its jobs in a terminal state
    first_queued_at: float | None = None  # when its first job was queued: where its end-to-end duration starts

    @property
    def duration(self) -> float | None:
        """End to end, first job queued -> last job done (as the metrics count it); None until it has finished,
        and for a pipeline that never had a job."""
        if not self.state.is_terminal or self.finished_at is None or self.first_queued_at is None:
            return None
        return max(0.0, self.finished_at - self.first_queued_at)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["spec"] = self.spec.to_dict()
        out["job_ids"] = list(self.job_ids)
        out["jobs_total"] = len(self.job_ids)
        out["duration"] = self.duration
        return out


def need_depths(needs: Mapping[str, Iterable[str]]) -> dict[str, int]:
    """Each job name's dependency depth in a pipeline, from what each name needs: 0 without needs, else 1 + the
    deepest of its needs (a matrix's members share their name, so a dependant of a matrix is deeper than all of
    them). A need the pipeline lacks counts for nothing, and a cycle (which planning refuses) is cut where it is
    met, so a damaged pipeline still shows. The API's `depth` and the dashboard's columns both come from here."""
    depth: dict[str, int] = {}

    def visit(name: str, path: frozenset[str]) -> int:
        if name not in depth:
            known = [need for need in needs[name] if need in needs and need not in path]
            depth[name] = 1 + max((visit(need, path | {name}) for need in known), default=-1)
        return depth[name]

    for name in needs:
        visit(name, frozenset())
    return depth
