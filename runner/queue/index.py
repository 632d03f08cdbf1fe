"""The cache index and workspace snapshots tables (migration 2), for runner.cache and runner.snapshot."""

from __future__ import annotations

import json
from typing import Any

from runner.models import CacheEntry, JobState, SnapshotRecord
from runner.queue.base import QueueBase

_CACHE_COLUMNS = "key, repo, scope, image, paths, object, size, checksum, created_at, last_used, hits"
_SNAPSHOT_COLUMNS = "job_id, key, sha, image, state, failed_step, failed_step_name, size, checksum, created_at"


class IndexQueries(QueueBase):
    """What the object store holds for the queue: cache entries (immutable, by key) and one snapshot per job."""

    def cache_entry(self, key: str) -> CacheEntry | None:
        with self._transaction("BEGIN") as conn:
            row = conn.execute(f"SELECT {_CACHE_COLUMNS} FROM cache_entries WHERE key = ?", (key,)).fetchone()
        return _cache_entry(row) if row else None

    def cache_fallback(self, repo: str, scope: str, image: str, paths: tuple[str, ...]) -> CacheEntry | None:
        """The newest entry of repo/scope with the same image and paths (a restore-keys prefix match)."""
        sql = (f"SELECT {_CACHE_COLUMNS} FROM cache_entries WHERE repo = ? AND scope = ? AND image = ? AND paths = ?"
               " ORDER BY created_at DESC LIMIT 1")
        with self._transaction("BEGIN") as conn:
            row = conn.execute(sql, (repo, scope, image, json.dumps(list(paths)))).fetchone()
        return _cache_entry(row) if row else None

    def add_cache_entry(self, entry: CacheEntry) -> bool:
        """Index a saved cache; False (and nothing changed) when its key is already there: entries are immutable."""
        with self._transaction() as conn:
            return conn.execute(
                f"INSERT OR IGNORE INTO cache_entries ({_CACHE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (entry.key, entry.repo, entry.scope, entry.image, json.dumps(list(entry.paths)), entry.object,
                 entry.size, entry.checksum, entry.created_at, entry.last_used, entry.hits),
            ).rowcount == 1

    def touch_cache_entry(self, key: str) -> None:
        """A job restored the entry: one more hit, used now."""
        with self._transaction() as conn:
            conn.execute("UPDATE cache_entries SET hits = hits + 1, last_used = ? WHERE key = ?", (self._clock(), key))

    def delete_cache_entry(self, key: str) -> CacheEntry | None:
        """Remove an entry from the index; returns it (its object is the caller's to delete), None if absent."""
        with self._transaction() as conn:
            row = conn.execute(f"DELETE FROM cache_entries WHERE key = ? RETURNING {_CACHE_COLUMNS}", (key,)).fetchone()
        return _cache_entry(row) if row else None

    def cache_entries(self, *, repo: str | None = None, limit: int = 1000) -> list[CacheEntry]:
        """Entries, most recently used first."""
        where, params = ("WHERE repo = ?", [repo]) if repo is not None else ("", [])
        sql = f"SELECT {_CACHE_COLUMNS} FROM cache_entries {where} ORDER BY last_used DESC, key LIMIT ?"
        with self._transaction("BEGIN") as conn:
            return [_cache_entry(row) for row in conn.execute(sql, [*params, limit]).fetchall()]

    def cache_stats(self) -> dict[str, int]:
        """Totals over the whole index in one query: entries, bytes, hits."""
        with self._transaction("BEGIN") as conn:
            count, size, hits = conn.execute(
                "SELECT count(*), coalesce(sum(size), 0), coalesce(sum(hits), 0) FROM cache_entries").fetchone()
        return {"entries": count, "bytes": size, "hits": hits}

    def cache_unused_since(self, ts: float) -> list[CacheEntry]:
        """Entries last used before ts (pruning)."""
        with self._transaction("BEGIN") as conn:
            rows = conn.execute(f"SELECT {_CACHE_COLUMNS} FROM cache_entries WHERE last_used < ? ORDER BY last_used",
                                (ts,)).fetchall()
        return [_cache_entry(row) for row in rows]

    def put_snapshot(self, record: SnapshotRecord) -> SnapshotRecord | None:
        """Record a job's snapshot; returns the one it replaces (an earlier attempt's), whose object is to delete."""
        with self._transaction() as conn:
            old = conn.execute(f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots WHERE job_id = ?", (record.job_id,)).fetchone()
            conn.execute(
                f"INSERT OR REPLACE INTO snapshots ({_SNAPSHOT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.job_id, record.key, record.sha, record.image, record.state, record.failed_step,
                 record.failed_step_name, record.size, record.checksum, record.created_at),
            )
        return _snapshot(old) if old and old[1] != record.key else None

    def snapshot(self, job_id: int) -> SnapshotRecord | None:
        with self._transaction("BEGIN") as conn:
            row = conn.execute(f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots WHERE job_id = ?", (job_id,)).fetchone()
        return _snapshot(row) if row else None

    def snapshots_before(self, ts: float) -> list[SnapshotRecord]:
        with self._transaction("BEGIN") as conn:
            rows = conn.execute(f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots WHERE created_at < ? ORDER BY created_at",
                                (ts,)).fetchall()
        return [_snapshot(row) for row in rows]

    def delete_snapshot(self, job_id: int, key: str | None = None) -> bool:
        """Forget a job's snapshot (only if it is still `key`, when given); True when a row went."""
        with self._transaction() as conn:
            return conn.execute("DELETE FROM snapshots WHERE job_id = ? AND (? IS NULL OR key = ?)",
                                (job_id, key, key)).rowcount == 1

    def stored_objects(self) -> set[str]:
        """Every store key the index refers to (maintenance deletes the others)."""
        with self._transaction("BEGIN") as conn:
            rows = conn.execute("SELECT object FROM cache_entries UNION ALL SELECT key FROM snapshots "
                                "UNION ALL SELECT object FROM artifacts WHERE object IS NOT NULL").fetchall()
        return {row[0] for row in rows}


def _cache_entry(row: tuple[Any, ...]) -> CacheEntry:
    key, repo, scope, image, paths, obj, size, checksum, created_at, last_used, hits = row
    return CacheEntry(key, repo, scope, image, tuple(json.loads(paths)), obj, size, checksum, created_at, last_used,
                      hits)


def _snapshot(row: tuple[Any, ...]) -> SnapshotRecord:
    job_id, key, sha, image, state, failed_step, failed_name, size, checksum, created_at = row
    return SnapshotRecord(job_id, key, sha, image, JobState(state), failed_step, failed_name, size, checksum,
                          created_at)
