"""The queue's database away for a while (PostgreSQL restarting, SQLite locked): a job's end is retried, not
dropped; a refusal still ends the retries; a failed heartbeat renews every lease before the next expiry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runner import persist
from runner.control import JobControl
from runner.errors import QueueError
from runner.events import EventBus
from runner.models import Job, JobSpec, JobState, Outcome
from runner.queue import Queue

SPEC = JobSpec(repo="https://git.example.test/acme/app.git", ref="main")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def failing(real: Any, times: int) -> Any:
    """`real`, after raising a fault of the database `times` times."""
    calls = {"n": 0}

    def call(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= times:
            raise QueueError("queue database: connection refused")
        return real(*args, **kwargs)

    call.calls = calls  # type: ignore[attr-defined]
    return call


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(persist, "DELAYS", (0.01,))


def claimed(queue: Queue, runner: str = "r1", lease: float = 10) -> Job:
    queue.enqueue(SPEC)
    job = queue.claim(runner, lease)
    assert job is not None
    return job


async def test_a_jobs_end_is_retried_through_faults_and_a_refusal_ends_the_retries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Queue(tmp_path / "q.db") as queue:
        control = JobControl(queue, EventBus())
        job = claimed(queue)
        complete = failing(queue.complete, 3)
        monkeypatch.setattr(queue, "complete", complete)
        assert await control.record(job, Outcome(JobState.success), "r1") is JobState.success
        assert complete.calls["n"] == 4 and queue.get(job.id).state is JobState.success

        other = claimed(queue)
        assert await control.record(other, Outcome(JobState.success), "not-its-runner") is None  # refused: at once
        assert queue.get(other.id).state is JobState.running


async def test_a_failed_heartbeat_renews_every_lease_before_the_next_expiry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    with Queue(tmp_path / "q.db", clock=clock) as queue:
        control = JobControl(queue, EventBus(), lease_seconds=30)
        kept, expired = claimed(queue, "r1"), claimed(queue, "r2")
        clock.now += 20  # both leases (10 s) ran out; without an outage both would be expired now
        monkeypatch.setattr(queue, "heartbeat", failing(queue.heartbeat, 1))
        with pytest.raises(QueueError):
            await control.heartbeat(kept.id, "r1", 10)  # the database is away: the outage is noted
        assert await control.expire_leases() == []
        assert {queue.get(i).state for i in (kept.id, expired.id)} == {JobState.running}
        assert queue.get(kept.id).lease_expires == pytest.approx(clock.now + 30)

        clock.now += 31  # nobody renewed the fresh lease: now it expires as usual
        assert sorted(await control.expire_leases()) == [kept.id, expired.id]


async def test_without_an_outage_expiry_is_unchanged(tmp_path: Path) -> None:
    clock = Clock()
    with Queue(tmp_path / "q.db", clock=clock) as queue:
        control = JobControl(queue, EventBus(), lease_seconds=30)
        job = claimed(queue)
        clock.now += 11
        assert await control.expire_leases() == [job.id]
