"""The job_metrics table (migration 4; its trigger writes a row per finished job): range aggregates, retention."""

from __future__ import annotations

import math
from typing import Any

from runner.models import BucketStats, JobState, RangeStats
from runner.queue.base import QueueBase

_IN_RANGE = "finished_at >= :since AND finished_at < :until"
_TERMINAL_STATES = tuple(state.value for state in JobState if state.is_terminal)
# One pass over the range gives the chart's slices, and the totals are their sums: a week of a busy server is
# 100,000 rows, and each extra pass over them costs more than the whole page otherwise does.
_METRIC_BUCKETS = f"""
SELECT CAST((finished_at - :since) / :width AS INTEGER),
       {", ".join(f"sum(state = '{state}')" for state in _TERMINAL_STATES)},
       total(duration), max(duration), count(duration), sum(cache_hit = 1), count(cache_hit)
FROM job_metrics WHERE {_IN_RANGE} GROUP BY 1
"""
# The hit rate counts cache entries (runner/queue/caches.py), not jobs: a job of two entries makes two lookups.
_CACHE_RESULTS = "SELECT result, count(*) FROM job_caches WHERE at >= :since AND at < :until GROUP BY result"
_METRIC_P95 = f"""
SELECT duration FROM job_metrics WHERE {_IN_RANGE} AND duration IS NOT NULL ORDER BY duration DESC
LIMIT 1 OFFSET :offset
"""


class MetricQueries(QueueBase):
    """Reads for bot.metrics and the dashboard, and the retention of the rows (they outlive their jobs)."""

    def range_stats(self, since: float, until: float, buckets: int = 24) -> RangeStats:
        """Totals, per-state counts, average and p95 duration, cache hits of the jobs finished in [since, until)."""
        if not until > since or buckets < 1:
            raise ValueError("range_stats needs since < until and at least one bucket")
        width = (until - since) / buckets
        span = {"since": since, "until": until}
        with self._transaction("BEGIN") as conn:
            rows = conn.execute(_METRIC_BUCKETS, {**span, "width": width}).fetchall()
            cache_results = {"hit": 0, "fallback": 0, "miss": 0} | dict(conn.execute(_CACHE_RESULTS, span).fetchall())
            timed = sum(row[-3] for row in rows)
            p95 = None
            if timed:
                # Nearest rank, counted from the top: the sorter then keeps 5% of the rows, not 95%.
                offset = timed - math.ceil(0.95 * timed)
                p95 = conn.execute(_METRIC_P95, {**span, "offset": offset}).fetchone()[0]
        per_bucket: dict[int, list[Any]] = {}
        for index, *counts, total, longest, known, hits, lookups in rows:
            index = min(index, buckets - 1)  # float rounding at the upper edge
            merged = per_bucket.setdefault(index, [[0] * len(counts), 0.0, None, 0, 0, 0])
            merged[0] = [a + b for a, b in zip(merged[0], counts, strict=True)]
            merged[1] += total
            merged[2] = longest if merged[2] is None else max(merged[2], longest or 0.0)
            merged[3] += known
            merged[4] += hits or 0
            merged[5] += lookups
        slices = []
        states = dict.fromkeys(_TERMINAL_STATES, 0)
        duration_sum = 0.0
        timed_total = hits_total = lookups_total = 0
        for index in range(buckets):
            counts, total, longest, known, hits, lookups = per_bucket.get(index, [[], 0.0, None, 0, 0, 0])
            by_state = {state: n for state, n in zip(_TERMINAL_STATES, counts, strict=False) if n}
            for state, n in by_state.items():
                states[state] += n
            duration_sum += total
            timed_total += known
            hits_total += hits
            lookups_total += lookups
            slices.append(BucketStats(since + index * width, by_state, total / known if known else None,
                                      longest if known else None))
        return RangeStats(
            since=since, until=until, states=states, avg_duration=duration_sum / timed_total if timed_total else None,
            p95_duration=p95, cache_hits=cache_results["hit"], cache_lookups=sum(cache_results.values()),
            bucket_seconds=width, buckets=tuple(slices), cache_results=cache_results,
        )

    def delete_metrics_before(self, ts: float) -> int:
        """Retention of the metrics rows (they outlive their jobs); returns how many were deleted."""
        with self._transaction() as conn:
            return conn.execute("DELETE FROM job_metrics WHERE finished_at < ?", (ts,)).rowcount
