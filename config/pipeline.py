"""The pipeline spec (.forgeci.toml, or a job submitted as JSON): model, validation, writing, branch filter."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import tomli_w

from config.artifacts import (
    ARTIFACTS, ARTIFACTS_DOC, ARTIFACTS_FROM, ARTIFACTS_FROM_DOC, JOB_ARTIFACTS, ArtifactSpec, check_artifacts_from,
)
from config.caches import CACHE, Caches
from config.caches import CacheSpec as CacheSpec  # re-exported: the pipeline model names it
from config.errors import ConfigError
from config.images import IMAGE, IMAGE_DOC, ImageBuild
from config.inputs import INPUTS, INPUTS_DOC, InputSpec
from config.labels import LABELS, RUNS_ON_DOC
from config.matrix import ENTRIES, MATRIX, NAME, NAME_RULE, Value
from config.plan import DEFAULT_JOB, MAX_NAME, check_jobs, expand_into
from config.services import SERVICES, Service
from config.triggers import EVENT_LIST, EVENTS_DOC, GLOBS, JOB_FILTER_DOC, PATHS_DOC, PATHS_IGNORE_DOC
from config.schema import (
    BOOL,
    DURATION,
    ENV_NAME,
    INVALID,
    NONEMPTY,
    STRING_TABLE,
    FieldDoc,
    Issues,
    Kind,
    as_text,
    choice,
    decode,
    describe,
    encode,
    field_docs,
    integer,
    key_path,
    load_toml,
    markdown_table,
    matching,
    nonempty_text,
    option,
    scalar,
    string_list,
    toml_inline,
)

SNAPSHOT_CHOICES: Final = ("always", "on_success", "on_failure", "never")
CONDITIONS: Final = ("success", "failure", "always")  # a job's `if`
# Every job keeps its workspace (issue 4): `forgeci debug` opens any job, and a failed one can be retried from
# its failed step. Retention (`retention.snapshot_days`) bounds the space.
DEFAULT_SNAPSHOT: Final = "always"


@dataclass(frozen=True, kw_only=True)
class Step:
    """One [[steps]] entry: a shell command run in the job's container."""

    name: str = option(NONEMPTY, "unique name, shown in logs and statuses; `forgeci run --step NAME`",
                       shown="`\"step-N\"` (its position, from 1)")
    run: str = option(NONEMPTY, "shell commands, run with bash in the workspace")
    timeout: float | None = option(DURATION, "limit for this step", None, shown="`runner.step_timeout`")
    continue_on_error: bool = option(BOOL, "a failure of this step does not fail the job", False)
    env: dict[str, str] = option(STRING_TABLE, "variables for this step, over the pipeline's `env`", factory=dict)


def _steps(alternative: str) -> Kind:
    """The Kind of a `steps` array; `alternative` is what the message offers instead of an empty one."""

    def convert(value: object, path: str, issues: Issues) -> object:
        if not isinstance(value, (list, tuple)) or not value:
            issues.add(path, f"expected at least one [[{path}]] table{alternative}, got {describe(value)}")
            return INVALID
        before = issues.count
        steps: list[Step] = []
        first_index: dict[str, int] = {}
        for i, raw in enumerate(value):
            where = f"{path}[{i}]"
            if isinstance(raw, dict) and "name" not in raw:
                raw = {"name": f"step-{i + 1}", **raw}
            step = decode(Step, raw, where, issues)
            if step is INVALID:
                continue
            if step.name in first_index:
                issues.add(f"{where}.name", f"duplicate step name {describe(step.name)} "
                                            f"(also {path}[{first_index[step.name]}])")
            first_index.setdefault(step.name, i)
            steps.append(step)
        return tuple(steps) if issues.count == before else INVALID

    return Kind("array of tables", convert, lambda steps: [encode(s) for s in steps], Step, "[].")


_STEPS = _steps(", or [jobs.NAME] tables")
# A job's steps and cache have the top-level keys: the reference lists those once (nested=None).
_JOB_STEPS = dataclasses.replace(_steps(""), label="array of tables, keys as `steps[]`", nested=None, nest="")
_CACHE = CACHE
_JOB_CACHE = dataclasses.replace(_CACHE, label="table or array of tables, keys as `cache`", nested=None, nest="")
_JOB_SERVICES = dataclasses.replace(SERVICES, label="table of tables, keys as `services`", nested=None, nest="")


def _job_name(value: object) -> str:
    found = as_text(value, "a job name")
    if not NAME.fullmatch(found) or len(found) > MAX_NAME:
        raise ValueError(f"expected a name of {NAME_RULE}, at most {MAX_NAME} long, got {describe(found)}")
    return found


_BRANCHES = string_list(nonempty_text, "array of globs")
_SECRETS = string_list(matching(ENV_NAME, "a secret name like NPM_TOKEN"), "array of names")
_SNAPSHOT = choice(*SNAPSHOT_CHOICES)


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """One [jobs.NAME] table: its steps, its place in the graph, its matrix, its overrides of the top level.

    An override left None takes the top-level key; `env` is merged over the top-level `env`.
    """

    needs: tuple[str, ...] = option(string_list(as_text, "array of job names"),
                                    "jobs that must finish first; a matrix job finishes with all its members", ())
    if_: str = option(choice(*CONDITIONS), "run when every need succeeded, when one failed, or always", "success",
                      key="if")
    matrix: dict[str, tuple[Value, ...]] | None = option(
        MATRIX, "axes of a matrix build: one member per combination, `${{ matrix.KEY }}` in its steps", None,
        shown="no matrix")
    matrix_exclude: tuple[dict[str, Value], ...] = option(
        ENTRIES, "combinations left out: an entry removes every member whose values include all of its", ())
    matrix_include: tuple[dict[str, Value], ...] = option(
        ENTRIES, "extra members, each exactly as written (never merged into other members)", ())
    fail_fast: bool = option(BOOL, "a failed member cancels its queued and running siblings", True)
    max_parallel: int | None = option(integer(1), "at most this many members of the matrix run at once", None,
                                      shown="no limit")
    continue_on_error: bool = option(BOOL, "a failure of this job does not fail the pipeline, and its dependants "
                                           "run as if it had succeeded", False)
    image: str | ImageBuild | None = option(IMAGE, IMAGE_DOC, None, shown="`image`")
    timeout: float | None = option(DURATION, "limit for the whole job", None, shown="`timeout`")
    runs_on: tuple[str, ...] | None = option(LABELS, RUNS_ON_DOC, None, shown="`runs_on`")
    branches: tuple[str, ...] | None = option(_BRANCHES, "refs this job runs for; others end `skipped`", None,
                                              shown="`branches`")
    events: tuple[str, ...] | None = option(EVENT_LIST, EVENTS_DOC + JOB_FILTER_DOC, None, shown="none")
    paths: tuple[str, ...] | None = option(GLOBS, PATHS_DOC + JOB_FILTER_DOC, None, shown="none")
    paths_ignore: tuple[str, ...] | None = option(GLOBS, PATHS_IGNORE_DOC + JOB_FILTER_DOC, None, shown="none")
    snapshot: str | None = option(_SNAPSHOT, "when to keep a workspace snapshot", None, shown="`snapshot`")
    secrets: tuple[str, ...] | None = option(_SECRETS, "secrets given to this job", None, shown="`secrets`")
    env: dict[str, str] = option(STRING_TABLE, "variables for every step of this job, over the top-level `env`",
                                 factory=dict)
    cache: Caches | None = option(_JOB_CACHE, "what to cache", None, shown="`cache`")
    services: dict[str, Service] = option(_JOB_SERVICES, "service containers of this job, over the top-level "
                                                         "`services` (by name)", factory=dict)
    artifacts: ArtifactSpec | None = option(JOB_ARTIFACTS, ARTIFACTS_DOC, None, shown="`artifacts`")
    artifacts_from: tuple[str, ...] | None = option(ARTIFACTS_FROM, ARTIFACTS_FROM_DOC, None,
                                                    shown="`artifacts_from`")
    steps: tuple[Step, ...] = option(_JOB_STEPS, "the job's steps, run in order; at least one")


def _convert_jobs(value: object, path: str, issues: Issues) -> object:
    if not isinstance(value, dict):
        issues.add(path, f"expected [jobs.NAME] tables, got {describe(value)}")
        return INVALID
    before = issues.count
    jobs = {}
    for key, item in value.items():
        if isinstance(key, str) and NAME.fullmatch(key):
            spec = decode(JobSpec, item, key_path(path, key), issues)
            if spec is not INVALID:
                jobs[key] = spec
    check_jobs([str(key) for key in value], jobs, path, issues)
    return jobs if issues.count == before else INVALID


_JOBS = Kind("table of tables", _convert_jobs, lambda jobs: {k: encode(v) for k, v in jobs.items()}, JobSpec,
             ".<NAME>.")


@dataclass(frozen=True, kw_only=True)
class Pipeline:
    """A whole pipeline; None timeouts and image mean the server's [runner] defaults.

    Either `steps` (one job) or `jobs` is set; with `jobs`, the other keys are every job's defaults.
    """

    name: str | None = option(scalar("job name", _job_name), "name of the pipeline, and of its job when it is "
                              "written as top-level [[steps]]", None, shown=f'`"{DEFAULT_JOB}"`')
    image: str | ImageBuild | None = option(IMAGE, IMAGE_DOC, None, shown="`runner.image`")
    timeout: float | None = option(DURATION, "limit for the whole job", None, shown="`runner.job_timeout`")
    runs_on: tuple[str, ...] = option(LABELS, RUNS_ON_DOC + "; with [jobs], every job's default", ())
    branches: tuple[str, ...] = option(_BRANCHES,
                                       "refs the pipeline runs for; others end `skipped`; empty = every ref", ())
    events: tuple[str, ...] = option(EVENT_LIST, EVENTS_DOC + "; empty = every event", ())
    paths: tuple[str, ...] = option(GLOBS, PATHS_DOC + "; empty = any change", ())
    paths_ignore: tuple[str, ...] = option(GLOBS, PATHS_IGNORE_DOC, ())
    snapshot: str = option(_SNAPSHOT, "when to keep a workspace snapshot for `forgeci debug`",
                           DEFAULT_SNAPSHOT)
    secrets: tuple[str, ...] = option(_SECRETS,
                                      "names from the server's [secrets], given as env variables; "
                                      "never given to fork pull requests", ())
    env: dict[str, str] = option(STRING_TABLE, "variables for every step", factory=dict)
    cache: Caches | None = option(_CACHE, "what to cache: one [cache] table, or several [[cache]] entries", None, shown="absent: detected from lockfiles")
    services: dict[str, Service] = option(
        SERVICES, "service containers beside every job, in one pod with it, reachable on 127.0.0.1 and by name",
        factory=dict, shown="no services")
    artifacts: ArtifactSpec | None = option(ARTIFACTS, ARTIFACTS_DOC + "; with [jobs], every job's default", None,
                                            shown="none")
    artifacts_from: tuple[str, ...] | None = option(ARTIFACTS_FROM, ARTIFACTS_FROM_DOC, None,
                                                    shown="every need")
    steps: tuple[Step, ...] = option(_STEPS, "the steps of a one-job pipeline, run in order", (),
                                     shown="required without `jobs`")
    jobs: dict[str, JobSpec] = option(_JOBS, "the jobs of a pipeline of many, by name", factory=dict,
                                      shown="required without `steps`")
    inputs: dict[str, InputSpec] = option(INPUTS, INPUTS_DOC, factory=dict, shown="none")

    def applies_to(self, ref: str) -> bool:
        """Whether the `branches` filter lets `ref` run.

        Plain patterns are fnmatch globs over branch names (`main`, `release/*`; `*` also
        crosses `/`); a pattern starting with `refs/` is matched against the full ref, which
        is the only way to select tags (`refs/tags/v*`) or other refs. A bare ref (`main`)
        is taken as a branch. No patterns: every ref runs.
        """
        if not self.branches:
            return True
        full = ref if ref.startswith("refs/") else f"refs/heads/{ref}"
        branch = full.removeprefix("refs/heads/") if full.startswith("refs/heads/") else None
        return any(
            fnmatch.fnmatchcase(full, pattern) if pattern.startswith("refs/")
            else branch is not None and fnmatch.fnmatchcase(branch, pattern)
            for pattern in self.branches
        )


def _check_form(obj: object, issues: Issues) -> None:
    """Top-level `steps` or `jobs`, exactly one of them (checked on the raw table, to be reported with the rest)."""
    if not isinstance(obj, dict):
        return
    if "steps" in obj and "jobs" in obj:
        issues.add("steps", "top-level [[steps]] cannot be used with [jobs]: move them into a [jobs.NAME] table")
    elif "steps" not in obj and "jobs" not in obj:
        keys = [f.name for f in dataclasses.fields(Pipeline)]
        # A misspelt `steps` or `jobs` is reported as an unknown key with a suggestion: one mistake, one issue.
        if not any(difflib.get_close_matches(k, keys, n=1) in (["steps"], ["jobs"])
                   for k in obj if isinstance(k, str) and k not in keys):
            issues.add("steps", "missing required key: expected at least one [[steps]] table, or [jobs.NAME] tables")


def pipeline_from_dict(obj: object, source: str) -> Pipeline:
    """A Pipeline from parsed TOML or JSON; every problem is reported in one ConfigError.

    A valid result also expands (config.plan.expand): matrices, substitutions and needs are checked here.
    """
    issues = Issues(source)
    pipeline: Pipeline = decode(Pipeline, obj, "", issues)
    _check_form(obj, issues)
    issues.raise_if_any()
    check_artifacts_from(pipeline, issues)
    expand_into(pipeline, issues)
    issues.raise_if_any()
    return pipeline


def parse_pipeline(data: bytes | str, source: str) -> Pipeline:
    """A Pipeline from the bytes of a .forgeci.toml."""
    return pipeline_from_dict(load_toml(data, source), source)


def load_pipeline(path: Path | str) -> Pipeline:
    """The Pipeline in file `path`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the pipeline: {exc.strerror or exc}", str(path)) from None
    return parse_pipeline(data, str(path))


def pipeline_to_dict(pipeline: Pipeline) -> dict[str, Any]:
    """The TOML/JSON-ready dict of `pipeline` (defaults left out); pipeline_from_dict reads it back."""
    return encode(pipeline)


def _step_blocks(steps: list[dict[str, Any]], prefix: str) -> list[str]:
    blocks = []
    for step in steps:
        env: Mapping[str, str] = step.pop("env", {})
        block = f"[[{prefix}steps]]\n" + tomli_w.dumps(step)
        if env:
            block += f"\n[{prefix}steps.env]\n" + tomli_w.dumps(env)
        blocks.append(block)
    return blocks


def _job_blocks(name: str, job: dict[str, Any]) -> list[str]:
    """`[jobs.NAME]` with its keys inline (a matrix reads as in the docs), then its env, cache and steps."""
    steps: list[dict[str, Any]] = job.pop("steps")
    tables = {key: job.pop(key) for key in ("env", "cache") if key in job}
    services: dict[str, dict[str, Any]] = job.pop("services", {})
    blocks = [f"[jobs.{name}]\n" + "".join(f"{key_path('', k)} = {toml_inline(v)}\n" for k, v in job.items())]
    for key, table in tables.items():  # [[jobs.NAME.cache]] entries, or one table
        for entry in table if isinstance(table, list) else [table]:
            brackets = ("[[", "]]") if isinstance(table, list) else ("[", "]")
            blocks.append(f"{brackets[0]}jobs.{name}.{key}{brackets[1]}\n" + tomli_w.dumps(entry))
    blocks += [f"[jobs.{name}.services.{key_path('', service)}]\n"
               + "".join(f"{key_path('', k)} = {toml_inline(v)}\n" for k, v in table.items())
               for service, table in services.items()]
    return blocks + _step_blocks(steps, f"jobs.{name}.")


def pipeline_to_toml(pipeline: Pipeline) -> str:
    """`pipeline` as .forgeci.toml text, with `[[steps]]` and `[jobs.NAME]` tables as people write them."""
    data = pipeline_to_dict(pipeline)
    steps: list[dict[str, Any]] = data.pop("steps", [])
    jobs: dict[str, dict[str, Any]] = data.pop("jobs", {})
    # tomli-w would write short steps as one inline array; a table per step reads (and diffs) better.
    blocks = [tomli_w.dumps(data)] if data else []
    blocks += _step_blocks(steps, "")
    for name, job in jobs.items():
        blocks += _job_blocks(name, job)
    return "\n".join(blocks)


def pipeline_reference() -> list[FieldDoc]:
    """Every .forgeci.toml key, for the README."""
    return field_docs(Pipeline)


def reference_markdown() -> str:
    """The .forgeci.toml part of the README's configuration reference."""
    return markdown_table(pipeline_reference())
