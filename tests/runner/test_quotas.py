"""Quotas: max_running and per_user_running make jobs wait (claims skip them, the queue view says why); usage rows
per attempt; max_queued and a month's minutes refuse new pipelines, and the next month accepts again."""

from __future__ import annotations

import asyncio
import calendar
import dataclasses
import itertools
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from config.quotas import QuotaRule
from config.settings import Settings, parse_settings
from runner.errors import QuotaExceeded
from runner.models import JobSpec, JobState, PipelineState
from runner.queue import Queue
from runner.queue.quotas import month_range, month_start
from runner.runtime import open_runtime
from tests.fake_engine import FakeEngine, Script

MakeRepo = Callable[..., tuple[Path, str]]
THREE = "".join(f'[jobs.{name}]\nsteps = [{{ run = "work" }}]\n' for name in ("a", "b", "c"))
DEC = float(calendar.timegm((2026, 12, 10, 12, 0, 0)))
JAN = float(calendar.timegm((2027, 1, 1, 0, 0, 1)))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def repo_in(tmp_path: Path, make_local_repo: MakeRepo, slug: str, files: dict[str, str]) -> Path:
    owner, name = slug.split("/")
    (tmp_path / owner).mkdir(exist_ok=True)
    return make_local_repo(files, f"{owner}/{name}")[0]


def with_quotas(settings: Settings, *rules: QuotaRule, max_concurrent: int = 3) -> Settings:
    return dataclasses.replace(settings, quotas=rules,
                               queue=dataclasses.replace(settings.queue, max_concurrent=max_concurrent))


def test_settings_parse_quotas_and_costs_and_name_bad_keys() -> None:
    settings = parse_settings('[[quotas]]\nmatch = "acme/*"\nmax_running = 4\nmax_queued = 200\n'
                              'minutes_per_month = 3000\nper_user_running = 2\n[costs]\nper_minute = 0.008\n'
                              'per_gb_month = 0.023\ncurrency = "EUR"\n', "forgeci.toml")
    assert settings.quotas == (QuotaRule("acme/*", 4, 200, 3000, 2),)
    assert (settings.costs.per_minute, settings.costs.per_gb_month, settings.costs.currency) == (0.008, 0.023, "EUR")
    with pytest.raises(Exception) as bad:
        parse_settings('[[quotas]]\nmatch = "acme"\nmax_runing = -1\n[costs]\nper_minute = -2\n', "f.toml")
    text = str(bad.value)
    assert "quotas[0].match" in text and "quotas[0].max_runing: unknown key" in text and "costs.per_minute" in text


def test_months_are_calendar_months_in_utc() -> None:
    assert month_start(DEC) == calendar.timegm((2026, 12, 1, 0, 0, 0))
    assert month_range("2026-12") == (calendar.timegm((2026, 12, 1, 0, 0, 0)), calendar.timegm((2027, 1, 1, 0, 0, 0)))
    with pytest.raises(ValueError):
        month_range("2026-13")


def _claim_all(queue: Queue) -> list[int]:
    claimed = []
    while (job := queue.claim("r", 60)) is not None:
        claimed.append(job.id)
    return claimed


def test_claims_skip_a_full_scope_and_the_queue_view_says_why(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q.db", max_concurrent=10)
    queue.set_quotas([QuotaRule("acme/*", max_running=4), QuotaRule("*/*", per_user_running=2)])
    acme = [queue.enqueue(JobSpec(repo=f"https://git.example.test/acme/app{i % 2}.git", ref="main"))
            for i in range(6)]
    ada = [queue.enqueue(JobSpec(repo="git@git.example.test:other/lib.git", ref="main", meta={"user": "ada"}))
           for _ in range(3)]
    bob = queue.enqueue(JobSpec(repo="https://git.example.test/other/lib", ref="main", meta={"sender": "bob"}))
    assert sorted(_claim_all(queue)) == sorted([*acme[:4], *ada[:2], bob])
    reasons = queue.wait_reasons([*acme[4:], ada[2]])
    assert reasons == {acme[4]: "quota acme/*: 4 of 4 running", acme[5]: "quota acme/*: 4 of 4 running",
                       ada[2]: "quota */*: 2 of ada's 2 running"}
    queue.complete(acme[0], JobState.success, runner_id="r")
    assert queue.wait_reasons([acme[4]]) == {acme[4]: "next in line"}
    assert _claim_all(queue) == [acme[4]]
    use = {u.match: u for u in queue.quota_use()}
    assert (use["acme/*"].running, use["acme/*"].max_running) == (4, 4)
    assert use["*/*"].users == {"ada": 2, "bob": 1}
    queue.close()


def test_without_quotas_the_claim_is_as_before(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db", max_concurrent=3) as queue:
        ids = [queue.enqueue(JobSpec(repo="https://h/acme/app", ref="main")) for _ in range(4)]
        assert _claim_all(queue) == ids[:3]
        assert queue.wait_reasons([ids[3]]) == {ids[3]: "no free slot: 3 of 3 running"}


def test_every_attempt_is_one_usage_row_and_retried_ones_are_flagged(tmp_path: Path) -> None:
    clock = Clock(DEC)
    with Queue(tmp_path / "q.db", max_retries=1, clock=clock) as queue:
        job = queue.enqueue(JobSpec(repo="https://h/acme/app.git", ref="main", meta={"user": "ada"}))
        queue.claim("agent-1", 60)
        clock.now += 90
        assert queue.fail_infra(job, "engine gone", "agent-1") is JobState.queued
        clock.now += 5
        queue.claim("agent-2", 60)
        clock.now += 30
        queue.complete(job, JobState.success, runner_id="agent-2")
        rows = queue.usage_rows(0, 1e12)
        assert [(r[1], r[3], r[4], r[5], r[6], r[9], r[10]) for r in rows] == [
            (1, "acme/app", "ada", "agent-1", "queued", 90.0, 1), (2, "acme/app", "ada", "agent-2", "success", 30.0, 0)]
        final = queue.get(job)
        assert rows[-1][7:9] == (final.started_at, final.finished_at)  # the job's own timestamps
        [report] = queue.usage_report("repo", 0, 1e12)
        assert (report.key, report.jobs, report.succeeded, report.attempts, report.seconds, report.retry_seconds) == (
            "acme/app", 1, 1, 2, 120.0, 90.0)
        assert queue.prune_usage(DEC + 100) == 1 and len(queue.usage_rows(0, 1e12)) == 1


def test_an_attempt_number_that_ends_twice_at_one_instant_keeps_both_usage_rows(tmp_path: Path) -> None:
    """A retried pipeline numbers its jobs' attempts afresh (retry_failed: attempts = 0), and a clock may stand
    still: usage's key (end, job, attempt) then repeats, and `seq` keeps the second row rather than refuse it."""
    with Queue(tmp_path / "q.db", clock=Clock(DEC)) as queue:
        job = queue.enqueue(JobSpec(repo="https://h/acme/app.git", ref="main", meta={"user": "ada"}))
        queue.claim("agent-1", 60)
        queue.complete(job, JobState.failure, runner_id="agent-1")
        with queue._transaction() as conn:  # as PipelineQueries.retry_failed requeues a failed job
            conn.execute("UPDATE jobs SET state = 'queued', attempts = 0, runner_id = NULL, finished_at = NULL, "
                         "error = NULL WHERE id = ?", (job,))
        queue.claim("agent-2", 60)
        queue.complete(job, JobState.success, runner_id="agent-2")
        rows = queue.usage_rows(0, 1e12)
        assert [(r[0], r[1], r[5], r[6], r[8]) for r in rows] == [
            (job, 1, "agent-1", "failure", DEC), (job, 1, "agent-2", "success", DEC)]


def test_a_month_s_minutes_and_max_queued_refuse_and_the_next_month_accepts(tmp_path: Path) -> None:
    clock = Clock(DEC)
    with Queue(tmp_path / "q.db", clock=clock) as queue:
        queue.set_quotas([QuotaRule("acme/*", minutes_per_month=3000), QuotaRule("busy/*", max_queued=2)])
        job = queue.enqueue(JobSpec(repo="https://h/acme/app.git", ref="main"))
        queue.claim("r", 60)
        clock.now += 2999 * 60
        assert queue.quota_refusal("acme/app") is None  # 2999 minutes so far, counted while it runs
        clock.now += 60
        queue.complete(job, JobState.success, runner_id="r")
        assert queue.quota_refusal("acme/app") == "quota exceeded: 3000 of 3000 minutes this month (acme/*)"
        assert queue.quota_refusal("other/app") is None
        clock.now = JAN
        assert queue.quota_refusal("acme/app") is None
        first = queue.create_pipeline(JobSpec(repo="https://h/busy/a", ref="main"))
        assert queue.quota_refusal("busy/b") is None
        queue.create_pipeline(JobSpec(repo="https://h/busy/b", ref="main"))
        assert queue.quota_refusal("busy/a") == "quota exceeded: 2 of 2 pipelines queued (busy/*)"
        assert queue.quota_refusal("busy/a", exclude_pipeline=first) is None  # the asking pipeline itself


async def test_max_running_one_never_overlaps_while_another_repository_runs_beside(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo, tmp_path: Path) -> None:
    acme = repo_in(tmp_path, make_local_repo, "acme/app", {".forgeci.toml": THREE})
    other = repo_in(tmp_path, make_local_repo, "other/lib", {".forgeci.toml": THREE})
    fake_engine.on("work", Script(delay=0.4))
    settings = with_quotas(fake_settings, QuotaRule("acme/*", max_running=1), max_concurrent=3)
    async with open_runtime(settings, {}, workers=True, engine=fake_engine) as rt:
        first = await rt.control.submit_pipeline(JobSpec(repo=str(acme), ref="main"))
        second = await rt.control.submit_pipeline(JobSpec(repo=str(other), ref="main"))
        reasons: set[str] = set()
        deadline = time.monotonic() + 120
        while not all(rt.queue.pipeline(p).state.is_terminal for p in (first.pipeline_id, second.pipeline_id)):
            assert time.monotonic() < deadline, "pipelines did not finish"
            reasons.update(rt.queue.wait_reasons(list(first.job_ids)).values())
            await asyncio.sleep(0.05)
        assert rt.queue.pipeline(first.pipeline_id).state is PipelineState.success
        assert "quota acme/*: 1 of 1 running" in reasons
        mine = sorted((j.started_at, j.finished_at) for j in map(rt.queue.get, first.job_ids))
        theirs = [(j.started_at, j.finished_at) for j in map(rt.queue.get, second.job_ids)]
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(mine)), mine  # one at a time
        assert any(s < e2 and s2 < e for s, e in theirs for s2, e2 in mine), (mine, theirs)  # beside them
        assert sum(s < e2 and s2 < e for (s, e) in theirs for (s2, e2) in theirs if (s, e) != (s2, e2)) > 0
        usage = {r[0]: r for r in rt.queue.usage_rows(0, 1e12)}
        for job in map(rt.queue.get, (*first.job_ids, *second.job_ids)):
            assert usage[job.id][7:10] == (job.started_at, job.finished_at, job.finished_at - job.started_at)


async def test_submit_over_a_quota_is_refused_and_records_nothing(
        fake_settings: Settings, fake_engine: FakeEngine, tmp_path: Path) -> None:
    settings = with_quotas(fake_settings, QuotaRule("acme/*", max_queued=1))
    async with open_runtime(settings, {}, workers=False, engine=fake_engine) as rt:
        rt.queue.create_pipeline(JobSpec(repo="https://h/acme/one", ref="main"))
        with pytest.raises(QuotaExceeded, match="1 of 1 pipelines queued"):
            await rt.control.submit_pipeline(JobSpec(repo="https://h/acme/two", ref="main"))
        assert len(rt.queue.list_pipelines()[0]) == 1


def test_usage_is_kept_thirteen_whole_months_by_maintenance(tmp_path: Path, fake_settings: Settings) -> None:
    from runner.layout import DataLayout
    from runner.maintenance import MaintenanceParts, prune
    from runner.queue.usage import usage_cutoff
    from runner.store import open_store

    assert usage_cutoff(DEC) == calendar.timegm((2025, 11, 1, 0, 0, 0))
    clock = Clock(calendar.timegm((2025, 10, 31, 23, 0, 0)))
    layout = DataLayout(fake_settings.data_dir)
    layout.db.parent.mkdir(parents=True, exist_ok=True)
    queue = Queue(layout.db, clock=clock)
    for seconds in (1800, 5400):  # one attempt ends in October 2025, one in November
        job = queue.enqueue(JobSpec(repo="https://h/acme/app", ref="main"))
        queue.claim("r", 60)
        clock.now += seconds
        queue.complete(job, JobState.success, runner_id="r")
    store = open_store(fake_settings, {})
    try:
        report = prune(MaintenanceParts(fake_settings, layout, queue, store), now=DEC)
        assert not report.errors
        assert [row[8] for row in queue.usage_rows(0, 1e12)] == [calendar.timegm((2025, 11, 1, 0, 0, 0)) + 3600]
    finally:
        store.close()
        queue.close()
