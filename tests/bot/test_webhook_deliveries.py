"""Queue.enqueue_deliveries: a delivery and its pipelines in one transaction, redeliveries, superseding, group
commit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runner.committer import DeliveryCommitter
from config.errors import ConfigError
from runner.models import JobSpec, JobState, PipelineState
from runner.queue import DELIVERY_MEMORY, PRUNE_EVERY, Delivery, NewDelivery, PlannedJobRow, Queue


def spec(branch: str = "main", sha: str = "a" * 40) -> JobSpec:
    return JobSpec(repo="https://forge.test/o/r.git", ref=f"refs/heads/{branch}", sha=sha, event="push",
                   concurrency_group=f"github:o/r:{branch}", meta={"forge": "github", "delivery": "x"})


def deliver(queue: Queue, forge: str, delivery_id: str, specs: list[JobSpec], *, supersede: bool = False) -> Delivery:
    """One delivery in its own transaction, as the committer sends a burst of one."""
    return queue.enqueue_deliveries([NewDelivery(forge, delivery_id, tuple(specs), supersede)])[0]


def plan(queue: Queue, pipeline_id: int) -> int:
    """Plan a pipeline as one job of its trigger (what the coordinator's planner writes); the job's id."""
    spec = queue.pipeline(pipeline_id).spec
    [job_id], _ = queue.write_plan(pipeline_id, spec.sha, [PlannedJobRow(spec=spec, name="ci", display="ci")])
    return job_id


@pytest.fixture
def queue(tmp_path: Path) -> Queue:
    return Queue(tmp_path / "queue.db")


def test_a_delivery_and_its_pipelines_commit_together(queue: Queue) -> None:
    result = deliver(queue, "github", "d1", [spec(), spec("other")])
    assert len(result.pipeline_ids) == 2 and result.job_ids == () and not result.redelivery
    records = [queue.pipeline(i) for i in result.pipeline_ids]
    assert [r.spec.ref for r in records] == ["refs/heads/main", "refs/heads/other"]
    assert all(r.state is PipelineState.planning for r in records)
    again = deliver(queue, "github", "d1", [spec(sha="b" * 40)])
    assert again.pipeline_ids == result.pipeline_ids and again.job_ids == () and again.redelivery
    assert [r.id for r in queue.due_plans()] == list(result.pipeline_ids)
    jobs = [plan(queue, i) for i in result.pipeline_ids]
    later = deliver(queue, "github", "d1", [spec()])
    assert later.redelivery and later.job_ids == tuple(jobs)  # the jobs its pipelines have by now
    other_forge = deliver(queue, "gitea", "d1", [spec()])  # ids are per forge
    assert not other_forge.redelivery


def test_nothing_is_kept_when_the_transaction_fails(queue: Queue) -> None:
    bad = JobSpec(repo="r", ref="main", pipeline={"not": {1, 2}})  # not JSON-serialisable
    with pytest.raises(ConfigError, match="pipeline"):
        queue.enqueue_deliveries([NewDelivery("github", "ok", (spec(),)), NewDelivery("github", "bad", (bad,))])
    assert queue.list_jobs() == ([], None) and queue.due_plans() == []
    assert not deliver(queue, "github", "ok", [spec()]).redelivery  # not recorded either


def test_supersede_cancels_queued_and_flags_running(queue: Queue) -> None:
    first = deliver(queue, "github", "d1", [spec()], supersede=True)
    first_job = plan(queue, first.pipeline_ids[0])
    assert queue.claim("runner", 60) is not None  # first is running
    second = deliver(queue, "github", "d2", [spec(sha="b" * 40)], supersede=True)
    assert second.superseded == first.pipeline_ids
    assert second.stopping == (first_job,) and second.cancelled == ()
    assert queue.get(first_job).cancel_requested and queue.get(first_job).state is JobState.running
    second_job = plan(queue, second.pipeline_ids[0])
    third = deliver(queue, "github", "d3", [spec(sha="c" * 40)], supersede=True)
    assert third.superseded == second.pipeline_ids  # not the first: it was already asked to stop
    assert third.cancelled == (second_job,) and third.stopping == ()
    assert queue.get(second_job).state is JobState.cancelled
    fourth = deliver(queue, "github", "d4", [spec(sha="e" * 40)], supersede=True)
    assert fourth.superseded == third.pipeline_ids and fourth.cancelled == fourth.stopping == ()  # it was planning
    assert queue.pipeline(third.pipeline_ids[0]).state is PipelineState.cancelled
    untouched = deliver(queue, "github", "d5", [spec(sha="d" * 40)])  # supersede off
    assert untouched.superseded == () and queue.pipeline(fourth.pipeline_ids[0]).state is PipelineState.planning


def test_one_batch_sees_its_own_deliveries(queue: Queue) -> None:
    results = queue.enqueue_deliveries([NewDelivery("github", "same", (spec(),), True),
                                        NewDelivery("github", "same", (spec(),), True),
                                        NewDelivery("github", "next", (spec(sha="e" * 40),), True)])
    assert results[1].redelivery and results[1].pipeline_ids == results[0].pipeline_ids
    assert results[2].superseded == results[0].pipeline_ids


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
    assert sorted(r.pipeline_ids[0] for r in results) == list(range(1, 21))
    bad = JobSpec(repo="r", ref="main", pipeline={"not": {1}})
    good, failed = await asyncio.gather(committer.commit(queue, "github", "good", [spec("g")], False),
                                        committer.commit(queue, "github", "bad", [bad], False),
                                        return_exceptions=True)
    assert not isinstance(good, BaseException) and isinstance(failed, Exception)  # a fault stays its own
    assert queue.pipeline(good.pipeline_ids[0]).state is PipelineState.planning
