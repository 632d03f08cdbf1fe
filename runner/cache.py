"""Dependency caches: each entry of a job restored with a restore-keys fallback and saved under its own key,
immutable entries indexed in SQLite, archives in the object store (keys and scopes: runner.cache_keys)."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from config.durations import format_duration
from runner.archive import (
    ArchiveAborted, ArchiveError, ArchiveWriter, Compressor, CorruptArchive, UnsafeArchive, check_paths, extract,
)
from runner.cache_keys import (
    CACHE_DIR, CONTAINER_WORKSPACE, KEY_VERSION, TOOLCHAINS, CachePlan, Toolchain, component, detect, plan_cache,
    plan_caches, ref_scope, repo_id, scopes,
)
from runner.cache_lru import evict_over_limit
from runner.errors import QueueError
from runner.models import CacheEntry, CacheResult
from runner.podman_user import PodmanUser
from runner.queue import Queue
from runner.store import ObjectMissing, ObjectStore, StoreError

__all__ = [
    "CACHE_DIR", "CONTAINER_WORKSPACE", "KEY_VERSION", "TOOLCHAINS", "CacheManager", "CachePlan", "Meter", "Metered",
    "Restored", "Toolchain", "component", "detect", "plan_cache", "plan_caches", "rate", "ref_scope", "repo_id", "scopes",
    "size_text",
]

Say = Callable[[str], None]

PROGRESS_EVERY = 5.0  # seconds between progress lines of a long transfer


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
PARALLEL_RESTORES = 4  # entries restored at once (bench/cache.py measures parallel against one by one)


@dataclass(frozen=True)
class Restored:
    outcome: Outcome
    entry: CacheEntry | None = None  # what was restored (a fallback's entry has another key than the plan's)
    size: int = 0  # bytes of the archive
    seconds: float = 0.0

    def result(self, plan: CachePlan) -> CacheResult:
        """The entry's row in the job's cache results."""
        return CacheResult(plan.name, plan.key, self.outcome, self.entry.key if self.entry else None, self.size,
                           self.seconds)


class CacheManager:
    """Restores and saves a job's caches, entry by entry. Every method blocks (run it in a thread) and never raises
    for a store, archive or index failure: a cache is an optimisation, so those become a miss or an unsaved
    cache, said in the job's log. `repo_limit`: bytes a repository's entries may hold (None: no limit)."""

    def __init__(
        self, store: ObjectStore, queue: Queue, user: PodmanUser, *, compressor: Compressor = "zstandard",
        clock: Callable[[], float] = time.time, repo_limit: int | None = None, parallel: int = PARALLEL_RESTORES,
    ) -> None:
        self.store = store
        self.queue = queue
        self.user = user
        self.compressor = compressor
        self.clock = clock
        self.repo_limit = repo_limit
        self.parallel = parallel

    def _owner(self) -> tuple[int, int] | None:
        return (self.user.uid, self.user.gid) if self.user.switch else None

    def _candidates(self, plan: CachePlan) -> Iterator[tuple[Outcome, CacheEntry, str]]:
        """Exact keys in every readable scope first, then (restore_keys) each scope's newest entry with the same
        paths."""
        for scope in plan.read_scopes:
            entry = self.queue.cache_entry(plan.key_in(scope))
            if entry is not None:
                yield "hit", entry, scope
        if not plan.restore_keys:
            return
        for scope in plan.read_scopes:
            entry = self.queue.cache_fallback(plan.repo, component(scope), plan.image, plan.paths)
            if entry is not None:
                yield "fallback", entry, scope

    def restore(self, plan: CachePlan, workspace: Path, say: Say, abort: threading.Event | None = None,
                job_id: int | None = None, attempt: int = 1) -> Restored:
        """Restore one entry's best match into `workspace` (before the job's container starts); logged, and
        recorded as the job's cache result when `job_id` is given."""
        return self.restore_all((plan,), workspace, say, abort, job_id, attempt)[0]

    def restore_all(self, plans: tuple[CachePlan, ...], workspace: Path, say: Say,
                    abort: threading.Event | None = None, job_id: int | None = None,
                    attempt: int = 1) -> list[Restored]:
        """Restore every entry, up to `parallel` at once (their paths never overlap); each result is logged and
        recorded, with the job's summary (all hit, some, none)."""
        def one(plan: CachePlan) -> Restored:
            started = time.monotonic()
            found = self._restore(plan, workspace, say, abort)
            return Restored(found.outcome, found.entry, found.size, time.monotonic() - started)

        workers = min(len(plans), max(1, self.parallel))
        if workers <= 1:
            results = [one(plan) for plan in plans]
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="cache-restore") as pool:
                results = list(pool.map(one, plans))
        if len(plans) > 1:
            say("cache: " + ", ".join(f"{plan.name} {_word(found)}" for plan, found in zip(plans, results)))
        if job_id is not None:
            with contextlib.suppress(QueueError):  # a job that lost its lease: its runner stops it anyway
                self.queue.record_cache_restores(job_id, attempt, [r.result(p) for p, r in zip(plans, results)])
        return results

    def _restore(self, plan: CachePlan, workspace: Path, say: Say, abort: threading.Event | None) -> Restored:
        try:
            candidates = list(self._candidates(plan))
        except QueueError as exc:
            say(f"{plan.prefix} miss {plan.key} (the cache index failed: {exc})")
            return Restored("miss")
        for outcome, entry, scope in candidates:
            if outcome == "fallback":
                say(f"{plan.prefix} no entry for {plan.key}; restoring the newest entry of scope {scope} with the "
                    f"same paths: {entry.key}")
            found = self._unpack(plan, outcome, entry, workspace, say, abort)
            if found is not None:
                return found
        say(f"{plan.prefix} miss {plan.key}")
        return Restored("miss")

    def _unpack(self, plan: CachePlan, outcome: Outcome, entry: CacheEntry, workspace: Path, say: Say,
                abort: threading.Event | None) -> Restored | None:
        """Restore `entry`; None when it is gone from the store (the next candidate is tried)."""
        staging = workspace / f".forgeci-restore-{uuid.uuid4().hex[:8]}"
        meter = Meter(say, f"{plan.prefix} restoring {entry.key}")
        try:
            staging.mkdir(mode=0o700)
            with self.store.get_stream(entry.object) as stream:
                info = extract(stream, staging, checksum=entry.checksum, owner=self._owner(), container_links=True,
                               progress=meter, abort=abort)
            self._move_into_place(staging, workspace, plan.paths)
        except ObjectMissing:
            say(f"{plan.prefix} {entry.key} is indexed but its archive is gone from the store; forgetting it")
            self._forget(entry)
            return None
        except StoreError as exc:
            say(f"{plan.prefix} warning: the store is unavailable ({exc}); continuing without a cache")
            return Restored("miss")
        except ArchiveAborted:
            say(f"{plan.prefix} restore cancelled")
            return Restored("miss")
        except (CorruptArchive, UnsafeArchive) as exc:  # it will never restore: it goes
            say(f"{plan.prefix} {entry.key} cannot be restored ({exc}); deleted, counted as a miss")
            self._forget(entry)
            return Restored("miss")
        except (ArchiveError, OSError) as exc:  # the local disk, or a workspace the paths cannot go into
            say(f"{plan.prefix} warning: restoring {entry.key} failed ({exc}); continuing without a cache")
            return Restored("miss")
        finally:
            _remove_tree(staging)
        with contextlib.suppress(QueueError):
            self.queue.touch_cache_entry(entry.key)
        kind = "hit" if outcome == "hit" else "fallback hit"
        say(f"{plan.prefix} {kind} {entry.key} ({rate(info.size, meter.seconds)}; {size_text(info.raw_size)} in "
            f"{info.files} files unpacked)")
        return Restored(outcome, entry, info.size)

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
                    with contextlib.suppress(FileExistsError):  # another entry's restore made it meanwhile
                        current.mkdir()
                        if self.user.switch:
                            os.lchown(current, self.user.uid, self.user.gid)
                    mode = os.lstat(current).st_mode
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

    def save_all(self, plans: tuple[CachePlan, ...], workspace: Path, say: Say,
                 abort: threading.Event | None = None, job_id: int | None = None,
                 attempt: int = 1) -> list[CacheEntry | None]:
        """Save each entry (one by one: archiving is the CPU's work), record each result, then keep the
        repository under its size limit without evicting what was just written."""
        saved: list[CacheEntry | None] = []
        for plan in plans:
            started = time.monotonic()
            entry, result = self._save(plan, workspace, say, abort)
            saved.append(entry)
            if job_id is not None:
                with contextlib.suppress(QueueError):
                    self.queue.record_cache_save(job_id, attempt, plan.name, result, entry.size if entry else None,
                                                 time.monotonic() - started)
        if self.repo_limit is not None and any(saved):
            keep = {plan.key for plan in plans}
            evict_over_limit(self.queue, self.store, plans[0].repo, self.repo_limit, keep, say)
        return saved

    def save(self, plan: CachePlan, workspace: Path, say: Say, abort: threading.Event | None = None) -> CacheEntry | None:
        """Archive one entry's paths under its key, unless the key exists (entries are immutable); the new entry."""
        return self.save_all((plan,), workspace, say, abort)[0]

    def _save(self, plan: CachePlan, workspace: Path, say: Say,
              abort: threading.Event | None) -> tuple[CacheEntry | None, str]:
        """(the new entry, what happened: saved | exists | empty | failed)."""
        try:
            existing = self.queue.cache_entry(plan.key)
        except QueueError as exc:
            say(f"{plan.prefix} warning: not saved (the cache index failed: {exc})")
            return None, "failed"
        if existing is not None:
            say(f"{plan.prefix} {plan.key} already exists ({size_text(existing.size)}); not uploaded again "
                f"(entries are immutable)")
            return None, "exists"
        paths, problems = check_paths(workspace, plan.paths)
        for problem in problems:
            say(f"{plan.prefix} {problem}")
        if not paths:
            say(f"{plan.prefix} nothing to save: none of {', '.join(plan.paths)} exists")
            return None, "empty"
        obj = f"caches/{plan.key}/{uuid.uuid4().hex[:16]}.tar.zst"
        meter = Meter(say, f"{plan.prefix} saving {plan.key}")
        try:
            with ArchiveWriter(workspace, paths, compressor=self.compressor, abort=abort) as writer:
                self.store.put_stream(obj, Metered(writer, meter))
                info = writer.info()
        except ArchiveAborted:
            say(f"{plan.prefix} save cancelled")
            return None, "failed"
        except (StoreError, ArchiveError) as exc:
            say(f"{plan.prefix} warning: not saved ({exc})")
            return None, "failed"
        now = self.clock()
        entry = CacheEntry(plan.key, plan.repo, component(plan.scope), plan.image, plan.paths, obj, info.size,
                           info.checksum, now, now)
        try:
            added, result = self.queue.add_cache_entry(entry), "exists"
        except QueueError as exc:
            say(f"{plan.prefix} warning: not saved (the cache index failed: {exc})")
            added, result = False, "failed"
        else:
            if not added:
                say(f"{plan.prefix} another job saved {plan.key} meanwhile; keeping its entry")
        if not added:
            with contextlib.suppress(StoreError):
                self.store.delete(obj)
            return None, result
        raw = f" from {size_text(info.raw_size)} of files" if info.raw_size else ""
        say(f"{plan.prefix} saved {plan.key} ({rate(info.size, meter.seconds)}{raw})")
        return entry, "saved"

    def delete(self, key: str) -> CacheEntry | None:
        """Remove an entry and its archive (DELETE /cache/{key}); None when there was none. StoreError propagates:
        the entry is already out of the index, and maintenance removes the orphaned archive later."""
        entry = self.queue.delete_cache_entry(key)
        if entry is not None:
            self.store.delete(entry.object)
        return entry


def _word(found: Restored) -> str:
    if found.outcome == "fallback" and found.entry is not None:
        return f"fallback from {found.entry.key}"
    return found.outcome


def _remove_tree(path: Path) -> None:
    """Delete what root extracted or a checkout left (as root: no subuid files are involved before the job runs)."""
    with contextlib.suppress(FileNotFoundError):
        if os.path.islink(path) or not os.path.isdir(path):
            os.unlink(path)
        else:
            shutil.rmtree(path)
