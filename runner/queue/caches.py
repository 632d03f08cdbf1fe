"""The job_caches table: each cache entry's result per attempt (restore, then save), the job's summary in
jobs.cache_hit, the hit rate over entries, and the per-repository sizes the LRU limit reads."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from runner.errors import QueueError
from runner.models import CacheEntry, CacheResult
from runner.queue.base import QueueBase

_RESULT_COLUMNS = "name, key, result, restored_key, size, seconds, saved, saved_size, save_seconds, attempt"
_CACHE_COLUMNS = "key, repo, scope, image, paths, object, size, checksum, created_at, last_used, hits"


def summary(results: Sequence[CacheResult]) -> int:
    """jobs.cache_hit of an attempt: 1 every entry hit, 2 some did, 0 none did."""
    hits = sum(r.result == "hit" for r in results)
    return 1 if hits == len(results) else 2 if hits else 0


class CacheResultQueries(QueueBase):
    """Per-entry cache results of jobs, and the cache index by repository (runner.cache_lru)."""

    def record_cache_restores(self, job_id: int, attempt: int, results: Sequence[CacheResult]) -> None:
        """The entries' restores of a running job's attempt, and its summary; QueueError if it is not running."""
        if not results:
            return
        now = self._clock()
        with self._transaction() as conn:
            if conn.execute("UPDATE jobs SET cache_hit = ? WHERE id = ? AND state = 'running'",
                            (summary(results), job_id)).rowcount == 0:
                raise QueueError(f"job {job_id} is not running: its cache results are not recorded")
            conn.executemany(
                "INSERT OR REPLACE INTO job_caches (job_id, attempt, name, key, result, restored_key, size, seconds,"
                " at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(job_id, attempt, r.name, r.key, r.result, r.restored_key, r.size, r.seconds, now)
                 for r in results])

    def record_cache_save(self, job_id: int, attempt: int, name: str, saved: str, size: int | None,
                          seconds: float) -> None:
        """How an entry's save went (an entry restored by this attempt has its row; others are left alone)."""
        with self._transaction() as conn:
            conn.execute("UPDATE job_caches SET saved = ?, saved_size = ?, save_seconds = ? "
                         "WHERE job_id = ? AND attempt = ? AND name = ?", (saved, size, seconds, job_id, attempt, name))

    def cache_results(self, job_id: int) -> tuple[CacheResult, ...]:
        """The entries of the job's latest attempt that restored caches, in name order."""
        with self._transaction("BEGIN") as conn:
            rows = conn.execute(
                f"SELECT {_RESULT_COLUMNS} FROM job_caches WHERE job_id = ? AND attempt = "
                "(SELECT max(attempt) FROM job_caches WHERE job_id = ?) ORDER BY name", (job_id, job_id)).fetchall()
        return tuple(CacheResult(*row) for row in rows)

    def cache_result_counts(self, since: float, until: float) -> dict[str, int]:
        """Entries restored in [since, until) by result: the hit rate counts entries, not jobs."""
        with self._transaction("BEGIN") as conn:
            rows = conn.execute("SELECT result, count(*) FROM job_caches WHERE at >= ? AND at < ? GROUP BY result",
                                (since, until)).fetchall()
        return {"hit": 0, "fallback": 0, "miss": 0} | dict(rows)

    def delete_cache_results_before(self, ts: float) -> int:
        """Retention of the rows (they outlive their jobs, like job_metrics)."""
        with self._transaction() as conn:
            return conn.execute("DELETE FROM job_caches WHERE at < ?", (ts,)).rowcount

    def repo_cache_bytes(self) -> dict[str, int]:
        """Bytes of every repository's cache entries."""
        with self._transaction("BEGIN") as conn:
            return dict(conn.execute("SELECT repo, sum(size) FROM cache_entries GROUP BY repo").fetchall())

    def cache_entries_lru(self, repo: str) -> list[CacheEntry]:
        """A repository's entries, least recently restored (or saved) first."""
        with self._transaction("BEGIN") as conn:
            rows = conn.execute(f"SELECT {_CACHE_COLUMNS} FROM cache_entries WHERE repo = ? ORDER BY last_used, key",
                                (repo,)).fetchall()
        return [_entry(row) for row in rows]


def _entry(row: tuple[Any, ...]) -> CacheEntry:
    key, repo, scope, image, paths, obj, size, checksum, created_at, last_used, hits = row
    return CacheEntry(key, repo, scope, image, tuple(json.loads(paths)), obj, size, checksum, created_at, last_used,
                      hits)
