"""The pipeline's caches: one `[cache]` table or several `[[cache]]` entries, each keyed, restored and saved alone."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Final

from config.schema import (
    BOOL,
    INVALID,
    Issues,
    Kind,
    choice,
    decode,
    describe,
    encode,
    matching,
    nonempty_text,
    option,
    scalar,
    string_list,
)

MAX_CACHES: Final = 16  # entries per job; each is an archive restored and saved on its own
CACHE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def workspace_path(value: object) -> str:
    """A path inside the workspace: caches are restored into it, so nothing may point outside."""
    found = nonempty_text(value)
    if found.startswith(("/", "~")) or ".." in PurePosixPath(found).parts:
        raise ValueError(f"expected a path inside the workspace (relative, without '..'), got {describe(found)}")
    return found


WORKSPACE_PATHS: Final = string_list(workspace_path, "array of paths")


@dataclass(frozen=True, kw_only=True)
class CacheSpec:
    """One cache entry (the [cache] table, or one [[cache]] table): what to keep between jobs, and what keys it."""

    name: str | None = option(scalar("string", matching(CACHE_NAME, "a name of letters, digits, '_', '.', '-'")),
                              "the entry's name in logs, statuses and its key; needed to tell several apart", None,
                              shown="`cache` (`cache-N` in an array)")
    paths: tuple[str, ...] = option(string_list(workspace_path, "array of paths", nonempty=True),
                                    "directories to cache, relative to the workspace")
    key_files: tuple[str, ...] = option(WORKSPACE_PATHS,
                                        "files whose contents key the cache (with the image and paths); globs "
                                        "such as `requirements*.txt` match at their directory", ())
    save: str = option(choice("success", "always"), "save after successful jobs only, or always", "success")
    restore_keys: bool = option(BOOL, "on a miss, restore the newest entry with the same paths (a prefix "
                                      "fallback, like restore-keys)", True)


Caches = CacheSpec | tuple[CacheSpec, ...]


def cache_specs(value: Caches | None) -> tuple[CacheSpec, ...]:
    """The entries of a pipeline's `cache` key: none, the one table, or the array's entries."""
    if value is None:
        return ()
    return value if isinstance(value, tuple) else (value,)


def cache_label(spec: CacheSpec, index: int, count: int) -> str:
    """How an entry is called in logs and statuses: its name, else `cache` alone or `cache-N` in an array."""
    if spec.name:
        return spec.name
    return "cache" if count == 1 else f"cache-{index + 1}"


def _overlap(a: str, b: str) -> bool:
    pa, pb = PurePosixPath(a).parts, PurePosixPath(b).parts
    return pa[:len(pb)] == pb or pb[:len(pa)] == pa


def _check_entries(entries: list[CacheSpec], path: str, issues: Issues) -> None:
    """Names unique, and no path in two entries: each entry's archive replaces its paths on restore."""
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        label = cache_label(entry, i, len(entries))
        if label in seen:
            issues.add(f"{path}[{i}].name", f"duplicate cache name {describe(label)} (also {path}[{seen[label]}])")
        seen.setdefault(label, i)
        for j, other in enumerate(entries[:i]):
            clash = next(((a, b) for a in entry.paths for b in other.paths if _overlap(a, b)), None)
            if clash:
                issues.add(f"{path}[{i}].paths", f"{describe(clash[0])} overlaps {describe(clash[1])} of "
                                                 f"{path}[{j}]: an entry's paths must be its own")
                break


def _convert(value: object, path: str, issues: Issues) -> object:
    if isinstance(value, dict):
        return decode(CacheSpec, value, path, issues)
    if not isinstance(value, (list, tuple)) or not value:
        issues.add(path, f"expected a [cache] table or [[cache]] tables, got {describe(value)}")
        return INVALID
    if len(value) > MAX_CACHES:
        issues.add(path, f"at most {MAX_CACHES} [[cache]] entries, got {len(value)}")
        return INVALID
    before = issues.count
    entries = [decode(CacheSpec, item, f"{path}[{i}]", issues) for i, item in enumerate(value)]
    if issues.count > before:
        return INVALID
    _check_entries(entries, path, issues)
    return tuple(entries) if issues.count == before else INVALID


def _dump(value: Caches) -> object:
    return [encode(entry) for entry in value] if isinstance(value, tuple) else encode(value)


CACHE: Final = Kind("table, or array of tables", _convert, _dump, CacheSpec, ".")

__all__ = ["CACHE", "CACHE_NAME", "MAX_CACHES", "CacheSpec", "Caches", "WORKSPACE_PATHS", "cache_label",
           "cache_specs", "workspace_path"]
