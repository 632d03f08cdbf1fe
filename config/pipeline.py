"""The pipeline spec (.forgeci.toml, or a job submitted as JSON): model, validation, writing, branch filter."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final

import tomli_w

from config.errors import ConfigError
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
    choice,
    decode,
    describe,
    encode,
    field_docs,
    load_toml,
    markdown_table,
    matching,
    nonempty_text,
    option,
    section,
    string_list,
)

SNAPSHOT_CHOICES: Final = ("always", "on_success", "on_failure", "never")
# Every job keeps its workspace (issue 4): `forgeci debug` opens any job, and a failed one can be retried from
# its failed step. Retention (`retention.snapshot_days`) bounds the space.
DEFAULT_SNAPSHOT: Final = "always"


def _workspace_path(value: object) -> str:
    """A path inside the workspace: caches are restored into it, so nothing may point outside."""
    found = nonempty_text(value)
    if found.startswith(("/", "~")) or ".." in PurePosixPath(found).parts:
        raise ValueError(f"expected a path inside the workspace (relative, without '..'), got {describe(found)}")
    return found


_WORKSPACE_PATHS = string_list(_workspace_path, "array of paths")


@dataclass(frozen=True, kw_only=True)
class Step:
    """One [[steps]] entry: a shell command run in the job's container."""

    name: str = option(NONEMPTY, "unique name, shown in logs and statuses; `forgeci run --step NAME`",
                       shown="`\"step-N\"` (its position, from 1)")
    run: str = option(NONEMPTY, "shell commands, run with bash in the workspace")
    timeout: float | None = option(DURATION, "limit for this step", None, shown="`runner.step_timeout`")
    continue_on_error: bool = option(BOOL, "a failure of this step does not fail the job", False)
    env: dict[str, str] = option(STRING_TABLE, "variables for this step, over the pipeline's `env`", factory=dict)


@dataclass(frozen=True, kw_only=True)
class CacheSpec:
    """The [cache] table: what to keep between jobs, and what keys it."""

    paths: tuple[str, ...] = option(string_list(_workspace_path, "array of paths", nonempty=True),
                                    "directories to cache, relative to the workspace")
    key_files: tuple[str, ...] = option(_WORKSPACE_PATHS,
                                        "files whose contents key the cache (with the image and paths)", ())
    save: str = option(choice("success", "always"), "save after successful jobs only, or always", "success")


def _convert_steps(value: object, path: str, issues: Issues) -> object:
    if not isinstance(value, (list, tuple)) or not value:
        issues.add(path, f"expected at least one [[steps]] table, got {describe(value)}")
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


_STEPS = Kind("array of tables", _convert_steps, lambda steps: [encode(s) for s in steps], Step, "[].")


@dataclass(frozen=True, kw_only=True)
class Pipeline:
    """A whole pipeline; None timeouts and image mean the server's [runner] defaults."""

    image: str | None = option(NONEMPTY, "job image", None, shown="`runner.image`")
    timeout: float | None = option(DURATION, "limit for the whole job", None, shown="`runner.job_timeout`")
    branches: tuple[str, ...] = option(string_list(nonempty_text, "array of globs"),
                                       "refs the pipeline runs for; others end `skipped`; empty = every ref", ())
    snapshot: str = option(choice(*SNAPSHOT_CHOICES), "when to keep a workspace snapshot for `forgeci debug`",
                           DEFAULT_SNAPSHOT)
    secrets: tuple[str, ...] = option(string_list(matching(ENV_NAME, "a secret name like NPM_TOKEN"),
                                                  "array of names"),
                                      "names from the server's [secrets], given as env variables; "
                                      "never given to fork pull requests", ())
    env: dict[str, str] = option(STRING_TABLE, "variables for every step", factory=dict)
    cache: CacheSpec | None = option(section(CacheSpec), "what to cache", None,
                                     shown="absent: detected from lockfiles")
    steps: tuple[Step, ...] = option(_STEPS, "the steps, run in order; at least one")

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


def pipeline_from_dict(obj: object, source: str) -> Pipeline:
    """A Pipeline from parsed TOML or JSON; every problem is reported in one ConfigError."""
    issues = Issues(source)
    pipeline: Pipeline = decode(Pipeline, obj, "", issues)
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


def pipeline_to_toml(pipeline: Pipeline) -> str:
    """`pipeline` as .forgeci.toml text, with `[[steps]]` tables as people write them."""
    data = pipeline_to_dict(pipeline)
    steps: list[dict[str, Any]] = data.pop("steps")
    # tomli-w would write short steps as one inline array; a table per step reads (and diffs) better.
    blocks = [tomli_w.dumps(data)] if data else []
    for step in steps:
        env: Mapping[str, str] = step.pop("env", {})
        block = "[[steps]]\n" + tomli_w.dumps(step)
        if env:
            block += "\n[steps.env]\n" + tomli_w.dumps(env)
        blocks.append(block)
    return "\n".join(blocks)


def pipeline_reference() -> list[FieldDoc]:
    """Every .forgeci.toml key, for the README."""
    return field_docs(Pipeline)


def reference_markdown() -> str:
    """The .forgeci.toml part of the README's configuration reference."""
    return markdown_table(pipeline_reference())
