"""The files a push or pull request changed, from git in the mirror at planning time, for the `paths` filters.

A push compares `before..sha`. A new branch, or a `before` the mirror cannot fetch (a force-push dropped it),
compares with the merge base of the repository's default branch; when that cannot be found either, or it is the
pushed commit itself (the default branch's own first push), the changes are unknown and every job runs. A pull
request compares merge-base(base, head)..head. Mirrors hold shallow history, so the fetch deepens until the merge
base is in it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from config.triggers import event_name
from runner.models import JobSpec

log = logging.getLogger(__name__)

BEFORE = "before"  # a push's meta: the sha its ref pointed at before the push
DEFAULT_BRANCH = "default_branch"  # a forge event's meta: the repository's default branch
# History fetched for a merge base, deeper each round; the last is git's "everything" (--unshallow's depth).
DEPTHS = (50, 500, 5000, 2**31 - 1)
MAX_FILES = 100_000  # past this, the diff is not worth filtering on: everything runs
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


class Mirror(Protocol):
    """What of runner.workspace.Workspaces finding changes needs."""

    async def fetch_history(self, repo: str, what: str, depth: int) -> str | None: ...

    async def mirror_git(self, repo: str, *args: str) -> str | None: ...


@dataclass(frozen=True)
class Changes:
    """The changed files (None: unknown, every job runs) and how they were found, for the log."""

    files: tuple[str, ...] | None
    how: str


def _known(sha: str | None) -> bool:
    return bool(sha) and _SHA.fullmatch(sha or "") is not None and set(sha or "") != {"0"}


async def changed_files(mirror: Mirror, spec: JobSpec, sha: str) -> Changes:
    """What `spec`'s event changed up to `sha` (which planning already fetched into the mirror)."""
    event = event_name(spec.event)
    if event == "pull_request" and spec.base_ref:
        base = await _merge_base(mirror, spec.repo, f"refs/heads/{spec.base_ref}", sha)
        if base is None:
            return Changes(None, f"no merge base of {spec.base_ref} and {sha[:12]}: every job runs")
        return await _diff(mirror, spec.repo, base, sha, f"merge base with {spec.base_ref}")
    if event != "push":
        return Changes(None, f"a {event} event has no changed files: path filters do not apply")
    before = spec.meta.get(BEFORE)
    if _known(before) and before != sha and await mirror.fetch_history(spec.repo, str(before), 1) == before:
        return await _diff(mirror, spec.repo, str(before), sha, "before the push")
    default = spec.meta.get(DEFAULT_BRANCH)
    if not default:
        return Changes(None, "a new branch, and the forge named no default branch: every job runs")
    base = await _merge_base(mirror, spec.repo, f"refs/heads/{default}", sha)
    if base is None or base == sha:
        return Changes(None, f"nothing to compare with on {default}: every job runs")
    return await _diff(mirror, spec.repo, base, sha, f"merge base with {default}")


async def _merge_base(mirror: Mirror, repo: str, ref: str, sha: str) -> str | None:
    """merge-base(ref, sha), fetching deeper history of both until the mirror holds it; None when there is none."""
    for depth in DEPTHS:
        tip = await mirror.fetch_history(repo, ref, depth)
        if tip is None:
            return None  # no such branch: no depth helps
        if await mirror.fetch_history(repo, sha, depth) is None:
            return None
        found = await mirror.mirror_git(repo, "merge-base", tip, sha)
        if found and _SHA.fullmatch(found.strip()):
            return found.strip()
    return None


async def _diff(mirror: Mirror, repo: str, base: str, sha: str, how: str) -> Changes:
    out = await mirror.mirror_git(repo, "diff", "--name-only", "-z", "--no-renames", base, sha, "--")
    if out is None:
        return Changes(None, f"cannot diff {base[:12]}..{sha[:12]}: every job runs")
    files = tuple(name for name in out.split("\0") if name)
    if len(files) > MAX_FILES:
        return Changes(None, f"{len(files)} files changed: every job runs")
    return Changes(files, f"{len(files)} files changed since {base[:12]} ({how})")


def uses_paths(filters: Sequence[tuple[Sequence[str] | None, Sequence[str] | None]]) -> bool:
    """Whether any (paths, paths_ignore) pair filters on paths: only then is the diff worth its fetches."""
    return any(paths or ignore for paths, ignore in filters)
