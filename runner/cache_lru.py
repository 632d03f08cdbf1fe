"""The per-repository cache size limit (`retention.cache_bytes_per_repo`, GitHub's 10 GB rule): past it, the
entries restored least recently go first, never one a job has just written. Run after each save and by the
hourly maintenance."""

from __future__ import annotations

from collections.abc import Callable, Collection

from runner.errors import QueueError
from runner.models import CacheEntry
from runner.queue import Queue
from runner.store import ObjectStore, StoreError


def _size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{size} B"


def evict_over_limit(queue: Queue, store: ObjectStore, repo: str, limit: int, keep: Collection[str] = (),
                     say: Callable[[str], None] | None = None, errors: list[str] | None = None) -> list[CacheEntry]:
    """Evict `repo`'s least recently used entries until it holds at most `limit` bytes; the keys in `keep` stay
    even when that leaves it over. Returns the evicted entries. Index and store failures stop the round (said
    through `say` or added to `errors`); the next save or maintenance round goes on from there."""
    try:
        entries = queue.cache_entries_lru(repo)
    except QueueError as exc:
        _report(say, errors, f"cache: the size limit was not applied (the cache index failed: {exc})")
        return []
    total = sum(entry.size for entry in entries)
    evicted: list[CacheEntry] = []
    for entry in entries:
        if total <= limit:
            break
        if entry.key in keep:
            continue
        try:
            removed = queue.delete_cache_entry(entry.key)
        except QueueError as exc:
            _report(say, errors, f"cache: the size limit was not applied (the cache index failed: {exc})")
            break
        if removed is None:  # another runner evicted or deleted it meanwhile
            continue
        total -= entry.size
        evicted.append(entry)
        try:
            store.delete(entry.object)
        except StoreError as exc:  # out of the index already: maintenance removes the orphaned archive
            _report(None, errors, f"cache {entry.key}: {exc}")
        if say is not None:
            say(f"cache: evicted {entry.key} ({_size(entry.size)}, the least recently used): the repository's "
                f"caches are over their {_size(limit)} limit")
    return evicted


def evict_all(queue: Queue, store: ObjectStore, limit: int, errors: list[str]) -> list[CacheEntry]:
    """Every repository over `limit` brought under it (maintenance)."""
    try:
        sizes = queue.repo_cache_bytes()
    except QueueError as exc:
        errors.append(f"cache size limit: {exc}")
        return []
    evicted: list[CacheEntry] = []
    for repo, size in sizes.items():
        if size > limit:
            evicted += evict_over_limit(queue, store, repo, limit, errors=errors)
    return evicted


def _report(say: Callable[[str], None] | None, errors: list[str] | None, text: str) -> None:
    if say is not None:
        say(text)
    if errors is not None:
        errors.append(text)
