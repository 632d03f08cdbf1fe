"""Queue.enqueue_deliveries: a delivery and its jobs in one transaction, redeliveries, superseding, group commit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runner.committer import DeliveryCommitter
from config.errors import ConfigError
from runner.models import JobSpec, JobState
from runner.queue import DELIVERY_MEMORY, PRUNE_EVERY, Delivery, NewDelivery, Queue


def spec(branch: str = "main", sha: str = "a" * 40) -> JobSpec:
    return JobSpec(repo="https://forge.test/o/r.git", ref=f"refs/heads/{branch}", sha=sha, event="push",
                   concurrency_group=f"github:o/r:{branch}", meta={"forge": "github", "delivery": "x"})


def deliver(queue: Queue, forge: str, delivery_id: str, specs: list[JobSpec], *, supersede: bool = False) -> Delivery:
    """One delivery in its own transaction, as the committer sends a burst of one."""
    return queue.enqueue_deliveries([NewDelivery(forge, delivery_id, tuple(specs), supersede)])[0]


@pytest.fixture
def queue(tmp_path: Path) -> Queue:
    return Queue(tmp_path / "queue.db")


def test_a_delivery_and_its_jobs_commit_together(queue: Queue) -> None:
    result = deliver(queue, "github", "d1", [spec(), spec("other")])
    assert len(result.job_ids) == 2 and not result.redelivery
    assert [queue.get(i).spec.ref for i in result.job_ids] == ["refs/heads/main", "refs/heads/other"]
    again = deliver(queue, "github", "d1", [spec(sha="b" * 40)])
    assert again.job_ids == result.job_ids and again.redelivery
    assert len(queue.list_jobs()[0]) == 2
    other_forge = deliver(queue, "gitea", "d1", [spec()])  # ids are per forge
    assert not other_forge.redelivery


def test_nothing_is_kept_when_the_transaction_fails(queue: Queue) -> None:
    bad = JobSpec(repo="r", ref="main", pipeline={"not": {1, 2}})  # not JSON-serialisable
    with pytest.raises(ConfigError, match="pipeline"):
        queue.enqueue_deliveries([NewDelivery("github", "ok", (spec(),)), NewDelivery("github", "bad", (bad,))])
    assert queue.list_jobs() == ([], None)
    assert not deliver(queue, "github", "ok", [spec()]).redelivery  # not recorded either


def test_supersede_cancels_queued_and_flags_running(queue: Queue) -> None:
    first = deliver(queue, "github", "d1", [spec()], supersede=True).job_ids[0]
    assert queue.claim("runner", 60) is not None  # first is running
    second = deliver(queue, "github", "d2", [spec(sha="b" * 40)], supersede=True)
    assert second.stopping == (first,) and second.cancelled == ()
    assert queue.get(first).cancel_requested and queue.get(first).state is JobState.running
    third = deliver(queue, "github", "d3", [spec(sha="c" * 40)], supersede=True)
    assert third.cancelled == second.job_ids and third.stopping == ()  # first was already asked to stop
    assert queue.get(second.job_ids[0]).state is JobState.cancelled
    untouched = deliver(queue, "github", "d4", [spec(sha="d" * 40)])  # supersede off
    assert untouched.cancelled == () and queue.get(third.job_ids[0]).state is JobState.queued


def test_one_batch_sees_its_own_deliveries(queue: Queue) -> None:
    results = queue.enqueue_deliveries([NewDelivery("github", "same", (spec(),), True),
                                        NewDelivery("github", "same", (spec(),), True),
                                        NewDelivery("github", "next", (spec(sha="e" * 40),), True)])
    assert results[1].redelivery and results[1].job_ids == results[0].job_ids
    assert results[2].cancelled == results[0].job_ids


def test_old_deliveries_are_forgotten(tmp_path: Path) -> None:
    now = [1_000_000.0]
    queue = Queue(tmp_path / "q.db", clock=lambda: now[0])
    deliver(queue, "github", "old", [spec()])
    now[0] += DELIVERY_MEMORY + 1
    for i in range(PRUNE_EVERY):  # pruning runs now and then, not on every delivery
        deliver(queue, "github", f"new-{i}", [spec(f"b{i}")])
    assert not deliver(queue, "github", "old", [spec()]).redelivery


async def test_committer_groups_a_burst_and_answers_each(queue: Queue) -> None:
    committer = DeliveryCommitter()
    results = await asyncio.gather(*(committer.commit(queue, "github", f"burst-{i}", [spec(f"b{i}")], True)
                                     for i in range(20)))
    assert sorted(r.job_ids[0] for r in results) == list(range(1, 21))
    bad = JobSpec(repo="r", ref="main", pipeline={"not": {1}})
    good, failed = await asyncio.gather(committer.commit(queue, "github", "good", [spec("g")], False),
                                        committer.commit(queue, "github", "bad", [bad], False),
                                        return_exceptions=True)
    assert not isinstance(good, BaseException) and isinstance(failed, Exception)  # a fault stays its own
    assert queue.get(good.job_ids[0]).state is JobState.queued
