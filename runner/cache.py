"""Dependency caches: keys from lockfiles (never the commit), branch and pull-request scopes, restore with a
restore-keys fallback, immutable entries indexed in SQLite, archives in the object store."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from config.durations import format_duration
from config.pipeline import Pipeline
from config.toolchains import CONTAINER_WORKSPACE, TOOLCHAINS
from runner.archive import (
    ArchiveAborted, ArchiveError, ArchiveWriter, Compressor, CorruptArchive, UnsafeArchive, check_paths, extract,
)
from runner.errors import QueueError
from runner.models import CacheEntry, JobSpec
from runner.podman_user import PodmanUser
from runner.queue import Queue
from runner.repos import parse_repo
from runner.store import ObjectMissing, ObjectStore, StoreError

Say = Callable[[str], None]

KEY_VERSION = 1  # bump when the archive layout changes: old keys then simply miss
PROGRESS_EVERY = 5.0  # seconds between progress lines of a long transfer


# -- keys and scopes ----------------------------------------------------------------------------------


def _component(text: str) -> str:
    """One key component: `/` and anything unusual percent-encoded; never `.` or `..`."""
    out = quote(text, safe="-_.~@+")
    return {"": "%00", ".": "%2E", "..": "%2E%2E"}.get(out, out)


def repo_id(repo: str) -> str:
    """A repository's name in cache keys: `host/owner/name` for a URL (https and ssh forms agree), `local/...` for
    a path. The host is part of it: two forges' `acme/app` must not share caches."""
    address = parse_repo(repo)
    host, path = ("local", address.local_path) if address.local else (address.host, address.path)
    path = posixpath.normpath("/" + path).removesuffix("/").removesuffix(".git")
    return "/".join(_component(p) for p in [host, *path.split("/")] if p)


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
    """What a job caches and under which keys."""

    repo: str
    scope: str  # the one scope saves go to
    read_scopes: tuple[str, ...]
    image: str
    paths: tuple[str, ...]  # sorted
    key_files: tuple[str, ...]  # the files whose contents were hashed
    digest: str
    save: str  # "success" | "always"
    env: Mapping[str, str]  # package-manager variables, already as container paths
    detected: bool  # from lockfiles (no [cache] table)

    def key_in(self, scope: str) -> str:
        return f"{self.repo}/{_component(scope)}/{self.digest}"

    @property
    def key(self) -> str:
        return self.key_in(self.scope)


def detect(workspace: Path) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, str]]:
    """(lockfiles found at the root, paths to cache, variables) for a pipeline without a [cache] table."""
    files: list[str] = []
    paths: list[str] = []
    env: dict[str, str] = {}
    for tool in TOOLCHAINS:
        found = sorted({p.name for pattern in tool.lockfiles for p in workspace.glob(pattern) if p.is_file()})
        if found:
            files += found
            paths += tool.paths
            env.update(tool.env)
    return tuple(dict.fromkeys(files)), tuple(sorted(set(paths))), env


def _file_digest(path: Path) -> str | None:
    """sha256 of a key file; None when it is absent (or not a regular file inside the workspace)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None


def plan_cache(spec: JobSpec, pipeline: Pipeline, workspace: Path, image: str) -> CachePlan | None:
    """The job's cache plan, None when there is nothing to cache. Reads only the key files (it blocks: to_thread)."""
    env: Mapping[str, str]
    if pipeline.cache is not None:
        key_files, paths, env = pipeline.cache.key_files, tuple(sorted(set(pipeline.cache.paths))), {}
        save, detected = pipeline.cache.save, False
    else:
        key_files, paths, env = detect(workspace)
        save, detected = "success", True
        if not paths:
            return None
    hashed = [[name, _file_digest(workspace / name)] for name in key_files]
    material = json.dumps({"v": KEY_VERSION, "image": image, "paths": list(paths), "files": hashed}, sort_keys=True)
    write, reads = scopes(spec)
    return CachePlan(
        repo=repo_id(spec.repo), scope=write, read_scopes=reads, image=image, paths=paths, key_files=tuple(key_files),
        digest=hashlib.sha256(material.encode()).hexdigest()[:32], save=save,
        env={name: f"{CONTAINER_WORKSPACE}/{rel}" for name, rel in env.items()}, detected=detected,
    )


# -- progress lines -------------------------------------------------------------------------------------


def size_text(size: int) -> str:
    """`512 B`, `12.3 kB`, `95.1 MB`, `2.04 GB`."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{size} B"


def rate(size: int, seconds: float) -> str:
    """`95.1 MB in 1.52s, 62.6 MB/s`: the tail of every transfer line."""
    took = f"{seconds:.2f}s" if seconds < 10 else format_duration(seconds)
    return f"{size_text(size)} in {took}, {size / 1e6 / max(seconds, 1e-3):.1f} MB/s"


class Meter:
    """Counts bytes of a transfer and says how far it got every PROGRESS_EVERY seconds."""

    def __init__(self, say: Say, what: str, every: float = PROGRESS_EVERY) -> None:
        self.say = say
        self.what = what
        self.every = every
        self.started = time.monotonic()
        self._next = self.started + every
        self.bytes = 0

    def __call__(self, total: int) -> None:
        self.bytes = total
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.every
            self.say(f"{self.what}: {rate(total, now - self.started)} so far")

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


class Metered:
    """A readable that tells a Meter how many bytes went through it."""

    def __init__(self, raw: ArchiveWriter, meter: Meter) -> None:
        self.raw = raw
        self.meter = meter
        self.count = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        self.meter(self.count)
        return data


# -- the manager ------------------------------------------------------------------------------------------

Outcome = Literal["hit", "fallback", "miss"]


@dataclass(frozen=True)
class Restored:
    outcome: Outcome
    entry: CacheEntry | None = None


class CacheManager:
    """Restores and saves a job's caches. Every method blocks (run it in a thread) and never raises for a store,
    archive or index failure: a cache is an optimisation, so those become a miss or an unsaved cache, said in the
    job's log."""

    def __init__(
        self, store: ObjectStore, queue: Queue, user: PodmanUser, *, compressor: Compressor = "zstandard",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.queue = queue
        self.user = user
        self.compressor = compressor
        self.clock = clock

    def _owner(self) -> tuple[int, int] | None:
        return (self.user.uid, self.user.gid) if self.user.switch else None

    def _candidates(self, plan: CachePlan) -> Iterator[tuple[Outcome, CacheEntry, str]]:
        """Exact keys in every readable scope first, then each scope's newest entry with the same paths."""
        for scope in plan.read_scopes:
            entry = self.queue.cache_entry(plan.key_in(scope))
            if entry is not None:
                yield "hit", entry, scope
        for scope in plan.read_scopes:
            entry = self.queue.cache_fallback(plan.repo, _component(scope), plan.image, plan.paths)
            if entry is not None:
                yield "fallback", entry, scope

    def restore(self, plan: CachePlan, workspace: Path, say: Say, abort: threading.Event | None = None,
                job_id: int | None = None) -> Restored:
        """Restore the best entry into `workspace` (before the job's container starts); the result is logged."""
        result = self._restore(plan, workspace, say, abort)
        if job_id is not None:
            with contextlib.suppress(QueueError):  # a job that lost its lease: its runner stops it anyway
                self.queue.set_cache_hit(job_id, result.outcome == "hit")
        return result

    def _restore(self, plan: CachePlan, workspace: Path, say: Say, abort: threading.Event | None) -> Restored:
        try:
            candidates = list(self._candidates(plan))
        except QueueError as exc:
            say(f"cache: miss {plan.key} (the cache index failed: {exc})")
            return Restored("miss")
        for outcome, entry, scope in candidates:
            if outcome == "fallback":
                say(f"cache: no entry for {plan.key}; restoring the newest entry of scope {scope} with the same "
                    f"paths: {entry.key}")
            staging = workspace / f".forgeci-restore-{uuid.uuid4().hex[:8]}"
            meter = Meter(say, f"cache: restoring {entry.key}")
            try:
                staging.mkdir(mode=0o700)
                with self.store.get_stream(entry.object) as stream:
                    info = extract(stream, staging, checksum=entry.checksum, owner=self._owner(), container_links=True,
                                   progress=meter, abort=abort)
                self._move_into_place(staging, workspace, plan.paths)
            except ObjectMissing:
                say(f"cache: {entry.key} is indexed but its archive is gone from the store; forgetting it")
                self._forget(entry)
                continue
            except StoreError as exc:
                say(f"cache: warning: the store is unavailable ({exc}); continuing without a cache")
                return Restored("miss")
            except ArchiveAborted:
                say("cache: restore cancelled")
                return Restored("miss")
            except (CorruptArchive, UnsafeArchive) as exc:  # it will never restore: it goes
                say(f"cache: {entry.key} cannot be restored ({exc}); deleted, counted as a miss")
                self._forget(entry)
                return Restored("miss")
            except (ArchiveError, OSError) as exc:  # the local disk, or a workspace the paths cannot go into
                say(f"cache: warning: restoring {entry.key} failed ({exc}); continuing without a cache")
                return Restored("miss")
            finally:
                _remove_tree(staging)
            with contextlib.suppress(QueueError):
                self.queue.touch_cache_entry(entry.key)
            kind = "hit" if outcome == "hit" else "fallback hit"
            say(f"cache: {kind} {entry.key} ({rate(info.size, meter.seconds)}; {size_text(info.raw_size)} in "
                f"{info.files} files unpacked)")
            return Restored(outcome, entry)
        say(f"cache: miss {plan.key}")
        return Restored("miss")

    def _move_into_place(self, staging: Path, workspace: Path, paths: tuple[str, ...]) -> None:
        """Rename each restored path from the staging folder into the workspace (what the checkout has there goes)."""
        for rel in paths:
            source = staging / rel
            if not os.path.lexists(source):
                continue
            parts = rel.split("/")
            current = workspace
            for part in parts[:-1]:  # parents must be real directories of the workspace, made here if missing
                current = current / part
                try:
                    mode = os.lstat(current).st_mode
                except FileNotFoundError:
                    current.mkdir()
                    if self.user.switch:
                        os.lchown(current, self.user.uid, self.user.gid)
                    continue
                if not stat.S_ISDIR(mode):
                    raise ArchiveError(f"cannot restore {rel}: {current.relative_to(workspace)} in the workspace is "
                                       f"not a directory")
            target = workspace / rel
            if os.path.lexists(target):
                _remove_tree(target)
            os.rename(source, target)

    def _forget(self, entry: CacheEntry) -> None:
        with contextlib.suppress(QueueError):
            self.queue.delete_cache_entry(entry.key)
        with contextlib.suppress(StoreError):
            self.store.delete(entry.object)

    def save(self, plan: CachePlan, workspace: Path, say: Say, abort: threading.Event | None = None) -> CacheEntry | None:
        """Archive the plan's paths under its key, unless the key exists (entries are immutable); the new entry."""
        try:
            existing = self.queue.cache_entry(plan.key)
        except QueueError as exc:
            say(f"cache: warning: not saved (the cache index failed: {exc})")
            return None
        if existing is not None:
            say(f"cache: {plan.key} already exists ({size_text(existing.size)}); not uploaded again "
                f"(entries are immutable)")
            return None
        paths, problems = check_paths(workspace, plan.paths)
        for problem in problems:
            say(f"cache: {problem}")
        if not paths:
            say(f"cache: nothing to save: none of {', '.join(plan.paths)} exists")
            return None
        obj = f"caches/{plan.key}/{uuid.uuid4().hex[:16]}.tar.zst"
        meter = Meter(say, f"cache: saving {plan.key}")
        try:
            with ArchiveWriter(workspace, paths, compressor=self.compressor, abort=abort) as writer:
                self.store.put_stream(obj, Metered(writer, meter))
                info = writer.info()
        except ArchiveAborted:
            say("cache: save cancelled")
            return None
        except (StoreError, ArchiveError) as exc:
            say(f"cache: warning: not saved ({exc})")
            return None
        now = self.clock()
        entry = CacheEntry(plan.key, plan.repo, _component(plan.scope), plan.image, plan.paths, obj, info.size,
                           info.checksum, now, now)
        try:
            added = self.queue.add_cache_entry(entry)
        except QueueError as exc:
            say(f"cache: warning: not saved (the cache index failed: {exc})")
            added = False
        else:
            if not added:
                say(f"cache: another job saved {plan.key} meanwhile; keeping its entry")
        if not added:
            with contextlib.suppress(StoreError):
                self.store.delete(obj)
            return None
        raw = f" from {size_text(info.raw_size)} of files" if info.raw_size else ""
        say(f"cache: saved {plan.key} ({rate(info.size, meter.seconds)}{raw})")
        return entry

    def delete(self, key: str) -> CacheEntry | None:
        """Remove an entry and its archive (DELETE /cache/{key}); None when there was none. StoreError propagates:
        the entry is already out of the index, and maintenance removes the orphaned archive later."""
        entry = self.queue.delete_cache_entry(key)
        if entry is not None:
            self.store.delete(entry.object)
        return entry


def _remove_tree(path: Path) -> None:
    """Delete what root extracted or a checkout left (as root: no subuid files are involved before the job runs)."""
    with contextlib.suppress(FileNotFoundError):
        if os.path.islink(path) or not os.path.isdir(path):
            os.unlink(path)
        else:
            shutil.rmtree(path)
