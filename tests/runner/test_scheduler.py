"""The cron scheduler on a fake clock: each due time fires once (over several, across a restart, with ticks
racing), no burst after downtime; and once on the real clock, a schedule fires within 70 s of being due."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from config.schedules import ScheduleSpec
from config.settings import Settings
from runner.control import JobControl
from runner.events import EventBus
from runner.queue import Queue
from runner.runtime import open_runtime
from runner.scheduler import Scheduler, group_of
from tests.fake_engine import FakeEngine

START = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC).timestamp()  # due times at every full minute after it
MINUTE = 60.0
NIGHTLY = ScheduleSpec(name="nightly", repo="https://git.example.test/acme/app.git", ref="main", cron="* * * * *",
                       env={"FULL": "1"})


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def with_schedules(settings: Settings, *schedules: ScheduleSpec) -> Settings:
    return dataclasses.replace(settings, schedules=tuple(schedules))


def scheduler(db: Path, settings: Settings, clock: Clock) -> Scheduler:
    queue = Queue(db, clock=clock)
    return Scheduler(queue, JobControl(queue, EventBus()), settings, clock=clock)


def pipelines(db: Path) -> list[tuple[str, str | None, str]]:
    with Queue(db) as queue:
        records, _ = queue.list_pipelines()
    return [(r.event, r.concurrency_group, r.spec.meta.get("schedule", "")) for r in reversed(records)]


async def test_a_minutely_schedule_fires_once_per_due_time(tmp_path: Path, fake_settings: Settings) -> None:
    db, clock = tmp_path / "queue.db", Clock()
    one = scheduler(db, with_schedules(fake_settings, NIGHTLY), clock)
    await one.sync()
    fired = []
    for offset in (0, 29, 30, 30, 45, 89, 90, 91, 150, 151, 155):  # seconds after START: due at 30, 90, 150
        clock.now = START + offset
        fired += [(clock.now - START, f.due - START) for f in await one.tick()]
    assert fired == [(30, 30), (90, 90), (150, 150)]
    assert pipelines(db) == [("schedule", group_of("nightly"), "nightly")] * 3
    [row] = one.queue.schedules()
    assert row.next_due == START + 210 and row.last_due == START + 150


async def test_a_restart_over_two_due_times_runs_it_once_and_says_so(
        tmp_path: Path, fake_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    db, clock, settings = tmp_path / "queue.db", Clock(), with_schedules(fake_settings, NIGHTLY)
    first = scheduler(db, settings, clock)
    await first.sync()
    clock.now = START + 30
    assert len(await first.tick()) == 1
    first.queue.close()  # the server stops; two due times pass (+90, +150)

    clock.now = START + 170
    again = scheduler(db, settings, clock)
    await again.sync()  # the stored due time survives the restart
    with caplog.at_level(logging.WARNING, logger="runner.scheduler"):
        fired = await again.tick()
    assert [f.due - START for f in fired] == [90]
    assert "the server was down over 2 due times since 2026-01-01 00:02 UTC; running it once" in caplog.text
    assert await again.tick() == []  # no burst: the next due time is after now
    [row] = again.queue.schedules()
    assert row.next_due == START + 210
    clock.now = START + 210
    assert len(await again.tick()) == 1
    assert len(pipelines(db)) == 3


async def test_a_restart_over_one_due_time_says_it_is_late(tmp_path: Path, fake_settings: Settings,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    hourly = dataclasses.replace(NIGHTLY, cron="0 * * * *")
    db, clock, settings = tmp_path / "queue.db", Clock(), with_schedules(fake_settings, hourly)
    await scheduler(db, settings, clock).sync()
    clock.now = START + 3570 + 600  # down at 01:00, back at 01:10
    again = scheduler(db, settings, clock)
    await again.sync()
    with caplog.at_level(logging.WARNING, logger="runner.scheduler"):
        assert [f.due - START for f in await again.tick()] == [3570]
    assert "the server was down at its due time 2026-01-01 01:00 UTC; running it now" in caplog.text


async def test_racing_ticks_fire_a_due_time_once(tmp_path: Path, fake_settings: Settings) -> None:
    """Two schedulers on their own connections (as two processes would be) tick at the same due times."""
    db, clock, settings = tmp_path / "queue.db", Clock(), with_schedules(fake_settings, NIGHTLY)
    one, two = scheduler(db, settings, clock), scheduler(db, settings, clock)
    await one.sync()
    await two.sync()
    for due in range(5):
        clock.now = START + 30 + due * MINUTE
        results = await asyncio.gather(one.tick(), two.tick(), one.tick(), two.tick())
        assert sum(len(r) for r in results) == 1
    assert len(pipelines(db)) == 5


async def test_a_changed_schedule_starts_afresh_and_a_removed_one_is_forgotten(tmp_path: Path,
                                                                              fake_settings: Settings) -> None:
    db, clock = tmp_path / "queue.db", Clock()
    hourly = ScheduleSpec(name="hourly", repo=NIGHTLY.repo, cron="0 * * * *")
    one = scheduler(db, with_schedules(fake_settings, NIGHTLY, hourly), clock)
    await one.sync()
    assert {r.name: r.next_due - START for r in one.queue.schedules() if r.next_due} == {"hourly": 3570,
                                                                                          "nightly": 30}
    clock.now = START + 100
    changed = dataclasses.replace(hourly, cron="30 * * * *")
    two = scheduler(db, with_schedules(fake_settings, changed), clock)
    await two.sync()
    assert {r.name: r.next_due - START for r in two.queue.schedules() if r.next_due} == {"hourly": 1770}


async def test_run_sleeps_until_the_next_due_time(tmp_path: Path, fake_settings: Settings) -> None:
    db, clock = tmp_path / "queue.db", Clock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds
        if len(slept) == 4:
            raise asyncio.CancelledError

    queue = Queue(db, clock=clock)
    loop = Scheduler(queue, JobControl(queue, EventBus()), with_schedules(fake_settings, NIGHTLY), clock=clock,
                     sleep=sleep)
    with pytest.raises(asyncio.CancelledError):
        await loop.run()
    assert slept == [30.0, 60.0, 60.0, 60.0] and len(pipelines(db)) == 3


@pytest.mark.slow
async def test_a_schedule_fires_within_70_seconds_of_being_due_on_the_real_clock(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: Callable[..., tuple[Path, str]]) -> None:
    repo, _ = make_local_repo({".forgeci.toml": '[[steps]]\nname = "nightly"\nrun = "nightly"\n'})
    schedule = dataclasses.replace(NIGHTLY, repo=str(repo))
    started = time.time()
    due = schedule.next_due(started)
    assert due is not None
    async with open_runtime(with_schedules(fake_settings, schedule), {}, workers=True, engine=fake_engine) as rt:
        deadline = started + 140
        while not (records := rt.queue.list_pipelines()[0]):
            assert time.time() < deadline, "no scheduled pipeline after 140 s"
            await asyncio.sleep(0.2)
        [record] = records
        assert record.event == "schedule" and record.created_at - due <= 70
        while not fake_engine.execs:
            assert time.time() < deadline, "its job did not run"
            await asyncio.sleep(0.1)
        env = fake_engine.execs[0].env
        assert (env["FORGECI_EVENT"], env["FULL"]) == ("schedule", "1")
