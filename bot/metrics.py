"""Job and pipeline metrics over a time range: headline numbers, a time series for charts, JSON and Prometheus text."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from config.errors import ConfigError, ConfigIssue
from runner.models import BucketStats, RangeStats
from runner.queue import PipelineStats, Queue

RANGES: dict[str, tuple[float, int]] = {  # name -> (seconds, chart buckets)
    "hour": (3600.0, 60),  # one bar a minute
    "day": (86400.0, 48),  # one bar every half hour
    "week": (7 * 86400.0, 56),  # one bar every three hours
}
# How long a range's aggregates are reused. A week of a busy server is 100,000 rows (about 80 ms to aggregate),
# and every open dashboard refreshes on every job event: a few seconds of staleness makes that load flat.
FRESH_FOR = {"hour": 2.0, "day": 5.0, "week": 15.0}
DEFAULT_RANGE = "day"
# Cancelled and skipped jobs are decisions, not outcomes: they count as jobs but not in the success rate.
OUTCOMES = ("success", "failure", "timeout", "error")
PIPELINE_OUTCOMES = ("success", "failure", "error")  # cancelled: a decision; skipped: nothing ran
NO_PIPELINES = PipelineStats({}, None, None)
Aggregates = tuple[RangeStats, PipelineStats]  # what MetricsCache keeps per range


def parse_range(value: str | None) -> str:
    name = DEFAULT_RANGE if value is None else value
    if name not in RANGES:
        raise ConfigError(ConfigIssue("request", "range", f"expected one of {', '.join(RANGES)}, got {name!r}"))
    return name


@dataclass(frozen=True)
class Metrics:
    """The numbers of one range, and the live queue figures taken at the same moment."""

    range: str
    stats: RangeStats
    queued: int
    running: int
    log_lines_dropped: int = 0  # since the server started: step output over runner.max_log_bytes
    pipelines: PipelineStats = NO_PIPELINES  # the pipelines finished in the range, end to end

    @property
    def pipeline_success_rate(self) -> float | None:
        states = self.pipelines.states
        decided = sum(states.get(state, 0) for state in PIPELINE_OUTCOMES)
        return states.get("success", 0) / decided if decided else None

    @property
    def success_rate(self) -> float | None:
        decided = sum(self.stats.states[state] for state in OUTCOMES)
        return self.stats.states["success"] / decided if decided else None

    @property
    def cache_hit_rate(self) -> float | None:
        return self.stats.cache_hits / self.stats.cache_lookups if self.stats.cache_lookups else None

    def to_dict(self) -> dict[str, Any]:
        stats = self.stats
        return {
            "range": self.range, "since": stats.since, "until": stats.until,
            "jobs": stats.total, "by_state": dict(stats.states),
            "success_rate": self.success_rate, "avg_duration": stats.avg_duration,
            "p95_duration": stats.p95_duration, "cache_hit_rate": self.cache_hit_rate,
            "cache_hits": stats.cache_hits, "cache_lookups": stats.cache_lookups,
            "cache_results": {result: stats.cache_results.get(result, 0) for result in ("hit", "fallback", "miss")},
            "queue_depth": self.queued, "running": self.running, "log_lines_dropped": self.log_lines_dropped,
            "bucket_seconds": stats.bucket_seconds, "buckets": [_bucket(b) for b in stats.buckets],
            "pipelines": {"total": self.pipelines.total, "by_state": dict(self.pipelines.states),
                          "success_rate": self.pipeline_success_rate, "avg_duration": self.pipelines.avg_duration,
                          "p95_duration": self.pipelines.p95_duration},
        }

    def to_prometheus(self) -> str:
        """Prometheus text exposition (version 0.0.4): gauges over the range, labelled with it."""
        label = f'range="{self.range}"'
        stats = self.stats
        out: list[str] = []

        def gauge(name: str, help: str, samples: list[tuple[str, float | None]]) -> None:
            out.append(f"# HELP {name} {help}")
            out.append(f"# TYPE {name} gauge")
            for labels, value in samples:
                out.append(f"{name}{{{labels}}} {_number(value)}")

        gauge("forgeci_jobs", "Jobs finished in the range, by final state.",
              [(f'{label},state="{state}"', count) for state, count in stats.states.items()])
        gauge("forgeci_jobs_finished", "Jobs finished in the range.", [(label, stats.total)])
        gauge("forgeci_job_success_ratio", "Successful share of the jobs that succeeded or failed in the range.",
              [(label, self.success_rate)])
        gauge("forgeci_job_duration_avg_seconds", "Average job duration in the range.",
              [(label, stats.avg_duration)])
        gauge("forgeci_job_duration_p95_seconds", "95th percentile job duration in the range.",
              [(label, stats.p95_duration)])
        pipelines = self.pipelines
        gauge("forgeci_pipelines", "Pipelines finished in the range, by final state.",
              [(f'{label},state="{state}"', count) for state, count in sorted(pipelines.states.items())])
        gauge("forgeci_pipelines_finished", "Pipelines finished in the range.", [(label, pipelines.total)])
        gauge("forgeci_pipeline_success_ratio",
              "Successful share of the pipelines that succeeded, failed or ended in error in the range.",
              [(label, self.pipeline_success_rate)])
        gauge("forgeci_pipeline_duration_avg_seconds",
              "Average end-to-end pipeline duration (first job queued to last job done) in the range.",
              [(label, pipelines.avg_duration)])
        gauge("forgeci_pipeline_duration_p95_seconds", "95th percentile end-to-end pipeline duration in the range.",
              [(label, pipelines.p95_duration)])
        gauge("forgeci_cache_hit_ratio", "Cache entries restored as exact hits, of those attempted in the range "
              "(a job of two entries makes two).", [(label, self.cache_hit_rate)])
        gauge("forgeci_cache_restores", "Cache entries restored in the range, by result (hit, fallback, miss).",
              [(f'{label},result="{result}"', stats.cache_results.get(result, 0))
               for result in ("hit", "fallback", "miss")])
        out += ["# HELP forgeci_queue_depth Jobs waiting in the queue now.", "# TYPE forgeci_queue_depth gauge",
                f"forgeci_queue_depth {self.queued}",
                "# HELP forgeci_jobs_running Jobs running now.", "# TYPE forgeci_jobs_running gauge",
                f"forgeci_jobs_running {self.running}",
                "# HELP forgeci_log_lines_dropped_total Step output lines dropped over runner.max_log_bytes.",
                "# TYPE forgeci_log_lines_dropped_total counter",
                f"forgeci_log_lines_dropped_total {self.log_lines_dropped}"]
        return "\n".join(out) + "\n"


def _number(value: float | None) -> str:
    return "NaN" if value is None else repr(float(value)) if isinstance(value, float) else str(value)


def _bucket(bucket: BucketStats) -> dict[str, Any]:
    return {"start": bucket.start, "jobs": bucket.total, "by_state": dict(bucket.states),
            "avg_duration": bucket.avg_duration, "max_duration": bucket.max_duration}


def range_stats(queue: Queue, range_name: str, now: float | None = None) -> RangeStats:
    seconds, buckets = RANGES[range_name]
    until = time.time() if now is None else now
    return queue.range_stats(until - seconds, until + 1e-6, buckets)  # + epsilon: a job finished right now counts


def range_aggregates(queue: Queue, range_name: str, now: float | None = None) -> tuple[RangeStats, PipelineStats]:
    """The range's job aggregates and its pipelines' (blocking)."""
    seconds, _ = RANGES[range_name]
    until = time.time() if now is None else now
    return range_stats(queue, range_name, until), queue.pipeline_stats(until - seconds, until + 1e-6)


def collect(queue: Queue, range_name: str, now: float | None = None) -> Metrics:
    """Read the range's aggregates and the live queue counts (blocking: call it off the event loop)."""
    stats, pipelines = range_aggregates(queue, range_name, now)
    queued, running = queue.active_counts()
    return Metrics(range_name, stats, queued, running, pipelines=pipelines)


class MetricsCache:
    """Range aggregates computed at most once per FRESH_FOR seconds, shared by concurrent requests; the queue
    figures (queued, running) are always read fresh."""

    def __init__(self, fresh_for: dict[str, float] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fresh_for = FRESH_FOR if fresh_for is None else fresh_for
        self.clock = clock
        self._stats: dict[str, tuple[float, Aggregates]] = {}
        self._pending: dict[str, asyncio.Future[Aggregates]] = {}

    async def get(self, queue: Queue, range_name: str, log_lines_dropped: int = 0) -> Metrics:
        stats, pipelines = await self._aggregates(queue, range_name)
        queued, running = await asyncio.to_thread(queue.active_counts)
        return Metrics(range_name, stats, queued, running, log_lines_dropped, pipelines)

    async def _aggregates(self, queue: Queue, range_name: str) -> Aggregates:
        cached = self._stats.get(range_name)
        if cached is not None and self.clock() - cached[0] < self.fresh_for.get(range_name, 0.0):
            return cached[1]
        pending = self._pending.get(range_name)
        if pending is None:  # the first asker computes; the others wait for its answer
            pending = asyncio.ensure_future(asyncio.to_thread(range_aggregates, queue, range_name))
            self._pending[range_name] = pending
            try:
                stats = await asyncio.shield(pending)
                self._stats[range_name] = (self.clock(), stats)
                return stats
            finally:
                self._pending.pop(range_name, None)
        return await asyncio.shield(pending)
