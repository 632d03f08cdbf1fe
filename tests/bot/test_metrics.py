"""Metrics: per-job rows, range aggregates (success rate, average and p95 duration, cache hits), JSON and Prometheus."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import pytest

from bot.metrics import MetricsCache, collect
from config.settings import Settings
from runner.models import CacheResult, JobSpec, JobState
from runner.queue import Queue
from tests.bot.api_helpers import api_client, api_settings, enqueue, finish, runtime_of
from tests.postgres import raw_sql

__all__ = ["api_settings"]

NOW = 1_800_000_000.0


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def run_job(queue: Queue, clock: Clock, *, start: float, steps: list[tuple[str, float, str]], state: str,
            cache_hit: bool | None = None) -> int:
    """A job that starts at `start` and whose steps take the given seconds, finishing in `state`."""
    clock.t = start - 5
    job_id = queue.enqueue(JobSpec(repo="r", ref="main"))
    clock.t = start
    assert queue.claim("runner", 60) is not None
    if cache_hit is not None:  # one cache entry, hit or missed
        queue.record_cache_restores(job_id, 1, [CacheResult("cache", "k", "hit" if cache_hit else "miss")])
    for index, (name, seconds, step_state) in enumerate(steps):
        queue.start_step(job_id, index, name)
        clock.t += seconds
        queue.finish_step(job_id, index, step_state, 0)
    clock.t += 1  # cleanup after the last step
    queue.complete(job_id, state, runner_id="runner")
    return job_id


def test_every_finished_job_gets_a_metrics_row_with_total_and_step_durations(tmp_path: Path) -> None:
    clock = Clock(NOW)
    with Queue(tmp_path / "q.db", clock=clock) as queue:
        job_id = run_job(queue, clock, start=NOW, steps=[("install", 3.0, "success"), ("test", 5.5, "failure")],
                         state="failure", cache_hit=True)
        clock.t = NOW + 100
        cancelled = queue.enqueue(JobSpec(repo="r", ref="main"))
        queue.cancel(cancelled)  # never started
        stats = queue.range_stats(NOW - 10, NOW + 200)
        # The aggregates are all the queue reads back; what the trigger stores per job is checked in the table.
        rows = raw_sql(queue, "SELECT job_id, state, duration, finished_at, steps, step_times, cache_hit"
                              " FROM job_metrics ORDER BY finished_at DESC")
    assert {state: n for state, n in stats.states.items() if n} == {"failure": 1, "cancelled": 1}
    assert stats.avg_duration == pytest.approx(9.5)  # the cancelled job never started: it has no duration
    assert (stats.cache_hits, stats.cache_lookups) == (1, 1)
    assert [row[:2] for row in rows] == [(cancelled, "cancelled"), (job_id, "failure")]
    _, _, duration, finished_at, steps, step_times, cache_hit = rows[1]
    assert duration == pytest.approx(9.5) and finished_at == pytest.approx(NOW + 9.5) and (steps, cache_hit) == (2, 1)
    assert [(name, pytest.approx(seconds)) for name, seconds in json.loads(step_times)] == [("install", 3.0),
                                                                                             ("test", 5.5)]
    assert rows[0][2:] == (None, pytest.approx(NOW + 100), 0, "[]", None)


def test_range_aggregates_success_rate_durations_and_cache_hits(tmp_path: Path) -> None:
    clock = Clock(NOW)
    durations = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0]
    with Queue(tmp_path / "q.db", clock=clock) as queue:
        for i, seconds in enumerate(durations):
            state = "failure" if i in (1, 2) else "timeout" if i == 3 else "success"
            run_job(queue, clock, start=NOW - 3000 + i * 200, steps=[("s", seconds - 1, state)], state=state,
                    cache_hit=None if i >= 8 else i % 2 == 0)
        run_job(queue, clock, start=NOW - 3 * 3600, steps=[("s", 999, "success")], state="success")  # outside
        clock.t = NOW - 100
        queue.cancel(queue.enqueue(JobSpec(repo="r", ref="main")))
        clock.t = NOW
        enqueue(queue)
        enqueue(queue)
        metrics = collect(queue, "hour", now=NOW)
    data = metrics.to_dict()
    assert data["jobs"] == 11
    assert data["by_state"] == {"success": 7, "failure": 2, "timeout": 1, "cancelled": 1, "skipped": 0, "error": 0}
    assert data["success_rate"] == pytest.approx(7 / 10)  # cancelled is a decision, not an outcome
    assert data["avg_duration"] == pytest.approx(sum(durations) / 10)
    assert data["p95_duration"] == pytest.approx(100.0)  # nearest rank: ceil(0.95 * 10) = 10th
    assert data["cache_hit_rate"] == pytest.approx(4 / 8)
    assert (data["queue_depth"], data["running"]) == (2, 0)
    assert len(data["buckets"]) == 60 and sum(b["jobs"] for b in data["buckets"]) == 11
    assert data["buckets"][-1]["start"] < NOW <= data["buckets"][-1]["start"] + data["bucket_seconds"] + 1e-3
    day = collect(queue_path_reopen(tmp_path), "day", now=NOW).to_dict()
    assert day["jobs"] == 12 and day["p95_duration"] == pytest.approx(1000.0)


def queue_path_reopen(tmp_path: Path) -> Queue:
    return Queue(tmp_path / "q.db")


def test_p95_is_the_nearest_rank_for_many_jobs(tmp_path: Path) -> None:
    clock = Clock(NOW)
    with Queue(tmp_path / "q.db", clock=clock) as queue:
        for i in range(1, 201):
            run_job(queue, clock, start=NOW - 3000 + i, steps=[], state="success")
            # duration is 1 s (cleanup) for all but the slowest ones
        slow = [run_job(queue, clock, start=NOW - 1000 + i, steps=[("s", float(i), "success")], state="success")
                for i in range(1, 21)]
        stats = queue.range_stats(NOW - 3600, NOW + 1)
    durations = sorted([1.0] * 200 + [i + 1.0 for i in range(1, 21)])
    assert len(slow) == 20
    assert stats.p95_duration == pytest.approx(durations[math.ceil(0.95 * len(durations)) - 1])


def test_an_empty_range_has_no_rates(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db") as queue:
        data = collect(queue, "week").to_dict()
    assert data["jobs"] == 0 and data["success_rate"] is None and data["avg_duration"] is None
    assert data["p95_duration"] is None and data["cache_hit_rate"] is None and len(data["buckets"]) == 56


async def test_metrics_endpoint_json_and_prometheus(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        queue = runtime_of(client).queue
        for state in ("success", "success", "failure"):
            finish(queue, enqueue(queue), state)
        enqueue(queue)
        data = await (await client.get("/metrics?range=hour")).json()
        assert (data["range"], data["jobs"], data["queue_depth"]) == ("hour", 3, 1)
        assert data["success_rate"] == pytest.approx(2 / 3)
        for request in ({"params": {"format": "prometheus"}}, {"headers": {"Accept": "text/plain"}}):
            response = await client.get("/metrics", **request)  # type: ignore[arg-type]
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await response.text()
            samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
            assert samples['forgeci_jobs{range="day",state="success"}'] == "2"
            assert samples['forgeci_jobs_finished{range="day"}'] == "3"
            assert float(samples['forgeci_job_success_ratio{range="day"}']) == pytest.approx(2 / 3)
            assert samples['forgeci_cache_hit_ratio{range="day"}'] == "NaN"
            assert samples["forgeci_queue_depth"] == "1" and samples["forgeci_jobs_running"] == "0"
            assert "# TYPE forgeci_job_duration_p95_seconds gauge" in text
        for query in ("range=month", "format=xml", "range="):
            response = await client.get(f"/metrics?{query}")
            assert response.status == 400 and "error" in await response.json()


def test_a_queued_jobs_cancel_and_a_retry_exhaustion_are_recorded_too(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db", max_retries=0) as queue:
        job_id = queue.enqueue(JobSpec(repo="r", ref="main"))
        queue.claim("runner", 60)
        assert queue.fail_infra(job_id, "engine died", "runner") is JobState.error
        stats = queue.range_stats(0, time.time() + 1)
    assert {state: n for state, n in stats.states.items() if n} == {"error": 1}


async def test_the_cache_reuses_a_ranges_aggregates_for_a_while_and_shares_one_computation(tmp_path: Path) -> None:
    clock = Clock(1000.0)
    with Queue(tmp_path / "q.db") as queue:
        cache = MetricsCache({"day": 5.0}, clock=clock)
        finish(queue, enqueue(queue))
        first, again = await asyncio.gather(cache.get(queue, "day"), cache.get(queue, "day"))
        assert first.stats is again.stats and first.stats.total == 1  # one computation for both askers
        finish(queue, enqueue(queue))
        enqueue(queue)
        clock.t += 4
        cached = await cache.get(queue, "day")
        assert cached.stats is first.stats and cached.queued == 1  # the queue figures are always fresh
        clock.t += 2
        assert (await cache.get(queue, "day")).stats.total == 2
