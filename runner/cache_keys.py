"""Cache keys: one plan per cache entry, keyed by its key files' contents (never the commit), the image and its
paths; branch and pull-request scopes; the entries detected from lockfiles when a pipeline has no [cache]."""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from config.caches import cache_label, cache_specs
from config.pipeline import Pipeline
from config.toolchains import CACHE_DIR, CONTAINER_WORKSPACE, TOOLCHAINS, Toolchain
from runner.models import JobSpec
from runner.repos import parse_repo

KEY_VERSION = 1  # bump when the archive layout changes: old keys then simply miss
_GLOB = frozenset("*?[")


# -- keys and scopes ----------------------------------------------------------------------------------


def component(text: str) -> str:
    """One key component: `/` and anything unusual percent-encoded; never `.` or `..`."""
    out = quote(text, safe="-_.~@+")
    return {"": "%00", ".": "%2E", "..": "%2E%2E"}.get(out, out)


def repo_id(repo: str) -> str:
    """A repository's name in cache keys: `host/owner/name` for a URL (https and ssh forms agree), `local/...` for
    a path. The host is part of it: two forges' `acme/app` must not share caches."""
    address = parse_repo(repo)
    host, path = ("local", address.local_path) if address.local else (address.host, address.path)
    path = posixpath.normpath("/" + path).removesuffix("/").removesuffix(".git")
    return "/".join(component(p) for p in [host, *path.split("/")] if p)


def ref_scope(ref: str) -> str:
    """The scope of a ref: a branch is its name; tags and other refs get a `~` prefix, which no branch can have."""
    if ref.startswith("refs/heads/"):
        return ref[len("refs/heads/"):]
    if ref.startswith("refs/tags/"):
        return "tag~" + ref[len("refs/tags/"):]
    if ref.startswith("refs/"):
        return "ref~" + ref[len("refs/"):]
    return ref


def scopes(spec: JobSpec) -> tuple[str, tuple[str, ...]]:
    """(the scope a job writes, the scopes it reads in order).

    A pull request reads its own scope, then its base branch's, and writes only its own: a fork can never
    put anything in a branch's cache.
    """
    if spec.pr_number is not None:
        own = f"pull~{spec.pr_number}"
        base = ref_scope(spec.base_ref) if spec.base_ref else None
        return own, (own, base) if base and base != own else (own,)
    if spec.fork:  # a fork's job that is somehow not a pull request: its own scope, nothing else
        own = "fork~" + ref_scope(spec.ref)
        return own, (own,)
    own = ref_scope(spec.ref)
    return own, (own,)


@dataclass(frozen=True)
class CachePlan:
    """What one cache entry of a job caches and under which keys."""

    repo: str
    scope: str  # the one scope saves go to
    read_scopes: tuple[str, ...]
    image: str
    paths: tuple[str, ...]  # sorted
    key_files: tuple[str, ...]  # the files whose contents were hashed (globs expanded)
    digest: str
    save: str  # "success" | "always"
    env: Mapping[str, str]  # package-manager variables, already as container paths
    detected: bool  # from lockfiles (no [cache] table)
    name: str = "cache"  # the entry's label in logs and statuses
    restore_keys: bool = True  # on a miss, fall back to the newest entry with the same paths
    named: bool = False  # several entries, or a named one: log lines say which entry they are about

    def key_in(self, scope: str) -> str:
        return f"{self.repo}/{component(scope)}/{self.digest}"

    @property
    def key(self) -> str:
        return self.key_in(self.scope)

    @property
    def prefix(self) -> str:
        """How this entry's log lines start: `cache:` alone, `cache node:` among several."""
        return f"cache {self.name}:" if self.named else "cache:"


@dataclass(frozen=True)
class _Entry:
    name: str | None
    key_files: tuple[str, ...]
    paths: tuple[str, ...]
    save: str
    restore_keys: bool
    env: Mapping[str, str]


def detect(workspace: Path) -> list[_Entry]:
    """One entry per toolchain whose lockfile is at the root; toolchains sharing a path (npm and yarn both keep
    node_modules) make one entry, since an entry's paths are its own."""
    entries: list[_Entry] = []
    for tool in TOOLCHAINS:
        found = tuple(sorted({p.name for pattern in tool.lockfiles for p in workspace.glob(pattern) if p.is_file()}))
        if not found:
            continue
        entry = _Entry(tool.name, found, tool.paths, "success", True, tool.env)
        for other in [e for e in entries if set(e.paths) & set(entry.paths)]:
            entries.remove(other)
            entry = _Entry(f"{other.name}+{entry.name}", tuple(dict.fromkeys(other.key_files + entry.key_files)),
                           tuple(sorted(set(other.paths) | set(entry.paths))), "success", True,
                           {**other.env, **entry.env})
        entries.append(entry)
    return entries


def _file_digest(path: Path) -> str | None:
    """sha256 of a key file; None when it is absent (or not a regular file inside the workspace)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None


def expand_key_files(workspace: Path, patterns: tuple[str, ...]) -> tuple[str, ...]:
    """The key files: a glob (`requirements*.txt`) stands for the regular files it matches, in order; one that
    matches nothing is kept as written (hashed as absent), so adding its first file changes the key."""
    out: list[str] = []
    for pattern in patterns:
        if _GLOB & set(pattern):
            found = sorted(p.relative_to(workspace).as_posix() for p in workspace.glob(pattern)
                           if p.is_file() and not p.is_symlink())
            out += found or [pattern]
        else:
            out.append(pattern)
    return tuple(dict.fromkeys(out))


def _plan(spec: JobSpec, entry: _Entry, workspace: Path, image: str, detected: bool, named: bool,
          label: str) -> CachePlan:
    paths = tuple(sorted(set(entry.paths)))
    key_files = entry.key_files if detected else expand_key_files(workspace, entry.key_files)
    hashed = [[name, _file_digest(workspace / name)] for name in key_files]
    material: dict[str, object] = {"v": KEY_VERSION, "image": image, "paths": list(paths), "files": hashed}
    if entry.name is not None and not detected:  # an unnamed [cache] keeps the keys it had before names
        material["name"] = entry.name
    write, reads = scopes(spec)
    return CachePlan(
        repo=repo_id(spec.repo), scope=write, read_scopes=reads, image=image, paths=paths, key_files=key_files,
        digest=hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32], save=entry.save,
        env={name: f"{CONTAINER_WORKSPACE}/{rel}" for name, rel in entry.env.items()}, detected=detected,
        name=label, restore_keys=entry.restore_keys, named=named,
    )


def plan_caches(spec: JobSpec, pipeline: Pipeline, workspace: Path, image: str) -> tuple[CachePlan, ...]:
    """The job's cache entries, each with its own key; none when there is nothing to cache. Reads only the key
    files (it blocks: to_thread)."""
    specs = cache_specs(pipeline.cache)
    if specs:
        entries = [_Entry(s.name, s.key_files, s.paths, s.save, s.restore_keys, {}) for s in specs]
        labels = [cache_label(s, i, len(specs)) for i, s in enumerate(specs)]
        named = len(specs) > 1 or specs[0].name is not None
        return tuple(_plan(spec, e, workspace, image, False, named, label) for e, label in zip(entries, labels))
    found = detect(workspace)
    return tuple(_plan(spec, e, workspace, image, True, len(found) > 1, e.name or "cache") for e in found)


def plan_cache(spec: JobSpec, pipeline: Pipeline, workspace: Path, image: str) -> CachePlan | None:
    """The job's only cache entry (None when it has none); for callers that know there is at most one."""
    plans = plan_caches(spec, pipeline, workspace, image)
    if len(plans) > 1:
        raise ValueError(f"the job has {len(plans)} cache entries")
    return plans[0] if plans else None


__all__ = ["CACHE_DIR", "CONTAINER_WORKSPACE", "KEY_VERSION", "TOOLCHAINS", "CachePlan", "Toolchain", "component",
           "detect", "expand_key_files", "plan_cache", "plan_caches", "ref_scope", "repo_id", "scopes"]
