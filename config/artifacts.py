"""The `artifacts` and `artifacts_from` keys of a pipeline: what a job keeps, for how long, and what it fetches."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Final

from config.durations import parse_duration, to_duration_string
from config.matrix import quoted
from config.schema import (
    Issues, as_text, choice, describe, key_path, nonempty_text, option, scalar, section, string_list,
)

if TYPE_CHECKING:  # config.pipeline imports this module
    from config.pipeline import JobSpec, Pipeline

WHEN: Final = ("success", "failure", "always")  # failure: the job failed or timed out
DAY: Final = 86400
MAX_EXPIRE_DAYS: Final = 3650
_DAYS = re.compile(r"\s*([0-9]{1,4})\s*d\s*(.*)", re.DOTALL)
EXPIRE_EXPECTED: Final = "expected a duration like 7d, 12h or 1d12h"


def _glob(value: object) -> str:
    """A glob inside the workspace: relative, without `..`, so that nothing outside /workspace can match."""
    found = nonempty_text(value)
    if found.startswith(("/", "~")) or ".." in PurePosixPath(found).parts or "\\" in found:
        raise ValueError(f"expected a glob inside the workspace (relative, without '..'), got {describe(found)}")
    return found


def parse_expire(value: object) -> float:
    """Seconds of an `expire`: days (`7d`), any duration (`12h`, `1d12h`), or a bare number of seconds."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = as_text(value, EXPIRE_EXPECTED[len("expected "):])
        match = _DAYS.fullmatch(text)
        try:
            if match is None:
                seconds = parse_duration(text)
            else:
                seconds = int(match[1]) * DAY + (parse_duration(match[2]) if match[2].strip() else 0.0)
        except ValueError:
            raise ValueError(f"{EXPIRE_EXPECTED}, got {describe(value)}") from None
    if not 0 < seconds <= MAX_EXPIRE_DAYS * DAY:
        raise ValueError(f"{EXPIRE_EXPECTED} between 1s and {MAX_EXPIRE_DAYS}d, got {describe(value)}")
    return seconds


def expire_text(seconds: float) -> str:
    """The file form of an expiry: `7d`, `1d12h`, `90m`; parse_expire reads it back."""
    days, rest = divmod(int(-(-seconds // 1)), DAY)
    if not days:
        return to_duration_string(rest)
    return f"{days}d" + (to_duration_string(rest) if rest else "")


EXPIRE: Final = scalar("duration", parse_expire, expire_text)
LINK_LIFETIMES: Final = (60.0, 7 * DAY)  # a download link works at least a minute, at most a week


def parse_link_lifetime(value: object) -> float:
    """Seconds a signed artifact link works (`server.artifact_link_lifetime`): `1h`, `12h`, `7d`, `90m`."""
    seconds = float(value) if isinstance(value, int) and not isinstance(value, bool) else parse_expire(value)
    lo, hi = LINK_LIFETIMES
    if not lo <= seconds <= hi:
        raise ValueError(f"expected a duration between 1m and 7d, got {describe(value)}")
    return seconds


LINK_LIFETIME: Final = scalar("duration", parse_link_lifetime, expire_text)

_SIZE = re.compile(r"\s*([0-9]{1,15})\s*([kmgt]?)i?b?\s*", re.IGNORECASE)
_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
SIZE_EXPECTED: Final = "expected a size like 1g, 500m or a number of bytes"


def parse_size(value: object) -> int:
    """Bytes in a size: an integer, or a number with a binary unit (`64k`, `500m`, `1g`, `1GiB`)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _SIZE.fullmatch(as_text(value, SIZE_EXPECTED[len("expected "):]))
        if match is None:
            raise ValueError(f"{SIZE_EXPECTED}, got {describe(value)}")
        size = int(match[1]) * _UNITS[match[2].lower()]
    if size < 1:
        raise ValueError(f"{SIZE_EXPECTED} (at least 1 byte), got {describe(value)}")
    return size


def size_text(size: int) -> str:
    """The file form of a size: the largest binary unit that divides it (`1g`, `1536m`), else bytes."""
    for unit in ("t", "g", "m", "k"):
        if size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)


SIZE: Final = scalar("size", parse_size, size_text)


@dataclass(frozen=True, kw_only=True)
class ArtifactSpec:
    """An `artifacts` table: the files a job keeps in the store for its dependants and for download."""

    paths: tuple[str, ...] = option(string_list(_glob, "array of globs", nonempty=True),
                                    "files to keep: globs inside the workspace (`**` spans folders; a folder keeps "
                                    "everything in it); matching nothing is a warning")
    when: str = option(choice(*WHEN), "keep them when the job succeeded, when it failed (or timed out), or always",
                       "success")
    expire: float | None = option(EXPIRE, "how long they are kept (`7d`, `12h`)", None,
                                  shown="`retention.artifact_days`")

    def keeps(self, state: str) -> bool:
        """Whether a job that ended in `state` keeps these artifacts (a cancelled or errored job keeps none)."""
        if state == "success":
            return self.when in ("success", "always")
        return state in ("failure", "timeout") and self.when in ("failure", "always")


ARTIFACTS: Final = section(ArtifactSpec)
JOB_ARTIFACTS: Final = dataclasses.replace(ARTIFACTS, label="table, keys as `artifacts`", nested=None, nest="")
ARTIFACTS_FROM: Final = string_list(lambda value: as_text(value, "a job name"), "array of job names")
ARTIFACTS_DOC: Final = "files the job keeps (for the jobs that need it, and for download)"
ARTIFACTS_FROM_DOC: Final = "which needs' artifacts are fetched into the workspace before the first step; [] = none"


def effective_from(artifacts_from: tuple[str, ...] | None, needs: tuple[str, ...]) -> tuple[str, ...]:
    """The needs whose artifacts a job fetches: all of them by default, else those `artifacts_from` names."""
    if artifacts_from is None:
        return needs
    return tuple(name for name in needs if name in artifacts_from)


def check_artifacts_from(pipeline: Pipeline, issues: Issues) -> None:
    """A job's own `artifacts_from` names jobs it needs; the top-level default names jobs of the pipeline."""
    jobs: Mapping[str, JobSpec] = pipeline.jobs
    if jobs and pipeline.artifacts_from is not None:
        for i, name in enumerate(pipeline.artifacts_from):
            if name not in jobs:
                issues.add(f"artifacts_from[{i}]", f"unknown job {quoted(name)} (jobs: {', '.join(jobs)})")
    for job_name, spec in jobs.items():
        for i, name in enumerate(spec.artifacts_from or ()):
            if name not in spec.needs:
                needs = ", ".join(spec.needs) or "none"
                issues.add(f"{key_path('jobs', job_name)}.artifacts_from[{i}]",
                           f"{quoted(name)} is not one of the job's needs (needs: {needs})")


__all__ = ["ARTIFACTS", "ARTIFACTS_DOC", "ARTIFACTS_FROM", "ARTIFACTS_FROM_DOC", "ArtifactSpec", "EXPIRE",
           "JOB_ARTIFACTS", "LINK_LIFETIME", "SIZE", "WHEN", "check_artifacts_from", "effective_from", "expire_text",
           "parse_expire", "parse_link_lifetime", "parse_size", "size_text"]
