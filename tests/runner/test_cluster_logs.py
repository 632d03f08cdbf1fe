"""Logs, events and the status feed across coordinators on one PostgreSQL queue (runner/cluster_logs.py,
runner/cluster_events.py, bot/status/feed.py): two coordinators' parts on one database, each with its own
connection pool and LISTEN connection, as two `forgeci serve` processes have."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from bot.status.feed import DatabaseFeed
from runner.cluster import Cluster, open_cluster
from runner.cluster_events import MAX_PAYLOAD, event_payload
from runner.events import JobEvent, PipelineEvent
from runner.logs import JobLog, LogLine, Masker
from runner.models import JobSpec, JobState
from runner.queue.postgres_queue import PostgresQueue

SPEC = JobSpec(repo="https://git.example.test/acme/app.git", ref="refs/heads/main",
               pipeline={"steps": [{"name": "build", "run": "make"}]})


@dataclass
class Node:
    queue: PostgresQueue
    cluster: Cluster
    logs: Path  # this coordinator's own log folder: the other's files are not here


@asynccontextmanager
async def node(url: str, folder: Path) -> AsyncIterator[Node]:
    queue = PostgresQueue(url)
    try:
        async with open_cluster(queue, lease=3.0) as cluster:
            yield Node(queue, cluster, folder)
    finally:
        queue.close()


async def collect(a: Node, job_id: int, into: list[LogLine]) -> None:
    async for line in a.cluster.hub.follow(job_id, a.logs / f"{job_id}.log", 0,
                                           done=lambda: a.queue.state_of(job_id).is_terminal):
        into.append(line)


async def until(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


async def test_a_follower_on_one_coordinator_sees_the_lines_of_a_job_run_on_the_other(pg_url: str,
                                                                                    tmp_path: Path) -> None:
    async with node(pg_url, tmp_path / "a") as a, node(pg_url, tmp_path / "b") as b:
        job_id = b.queue.enqueue(SPEC)
        assert b.queue.claim("b-runner", 60) is not None
        seen: list[LogLine] = []
        follower = asyncio.create_task(collect(a, job_id, seen))
        log = JobLog(b.logs / f"{job_id}.log", job_id, b.cluster.hub, Masker(["hunter2-secret"]))
        log.write("build", "stdout", b"first line\n")
        await until(lambda: len(seen) == 1, 10, "the first line, live, while the job runs")
        assert not a.queue.state_of(job_id).is_terminal
        for i in range(200):
            log.write("build", "stdout", f"line {i} hunter2-secret\n".encode())
        log.system("step build: success", "build")
        log.close()
        b.queue.complete(job_id, JobState.success, runner_id="b-runner")
        await asyncio.wait_for(follower, 10)  # it ends: the job is terminal and every line has been read
        assert [line.n for line in seen] == list(range(1, 203))
        assert seen[1].text == "line 0 ***" and seen[-1].stream == "system"
        assert not (a.logs / f"{job_id}.log").exists()  # it came through the database, not a shared file
        # The API's plain read, and a second attempt on the other coordinator numbering on.
        assert [line.n for line in await asyncio.to_thread(a.cluster.hub.read, job_id, a.logs, 200)] == [201, 202]
        again = JobLog(a.logs / f"{job_id}.log", job_id, a.cluster.hub, Masker.empty())
        assert again.system("attempt 2").n == 203
        again.close()
        assert b.queue.log_last(job_id) == 203


async def test_events_published_on_one_coordinator_reach_the_subscribers_of_the_other(pg_url: str,
                                                                                     tmp_path: Path) -> None:
    async with node(pg_url, tmp_path / "a") as a, node(pg_url, tmp_path / "b") as b:
        got_a: list[object] = []
        got_b: list[object] = []

        async def listen(bus, into: list[object]) -> None:  # noqa: ANN001
            async for event in bus.subscribe():
                into.append(event)

        tasks = [asyncio.create_task(listen(a.cluster.events, got_a)),
                 asyncio.create_task(listen(b.cluster.events, got_b))]
        await asyncio.sleep(0.05)
        b.cluster.events.publish(JobEvent(7, "running", "step", {"index": 0, "name": "build", "total": 2}))
        b.cluster.events.publish(PipelineEvent(3, "failure", {"error": "x" * 20_000}))  # over NOTIFY's limit
        await until(lambda: len(got_a) == 2, 10, "both events on the other coordinator")
        step, pipeline = got_a
        assert isinstance(step, JobEvent) and (step.job_id, step.kind, step.data["name"]) == (7, "step", "build")
        assert isinstance(pipeline, PipelineEvent) and pipeline.state == "failure"
        assert pipeline.data["error"].startswith("xxx") and len(pipeline.data["error"]) < 1000
        await asyncio.sleep(0.3)
        assert len(got_b) == 2  # its own events once each (in-process), not again from the database
        for task in tasks:
            task.cancel()
    assert len(event_payload(PipelineEvent(1, "error", {f"k{i}": "y" * 399 for i in range(100)}), "o")) < MAX_PAYLOAD


async def test_the_status_feed_yields_every_state_change_of_either_coordinator_once_in_order(
        pg_url: str, tmp_path: Path) -> None:
    async with node(pg_url, tmp_path / "a") as a, node(pg_url, tmp_path / "b") as b:
        assert a.cluster.listener is not None
        feed = DatabaseFeed(a.queue, a.cluster.listener, takeover=60.0)
        seen: list[tuple[int, str]] = []

        async def read() -> None:
            async for event in feed():
                assert isinstance(event, JobEvent)
                seen.append((event.job_id, event.state))

        reader = asyncio.create_task(read())
        first = b.queue.enqueue(SPEC)
        second = a.queue.enqueue(SPEC)
        assert b.queue.claim("b", 60).id == first  # type: ignore[union-attr]
        b.queue.complete(first, JobState.success, runner_id="b")
        assert a.queue.claim("a", 60).id == second  # type: ignore[union-attr]
        a.queue.complete(second, JobState.failure, "step build failed", runner_id="a")
        want = [(first, "queued"), (second, "queued"), (first, "running"), (first, "success"),
                (second, "running"), (second, "failure")]
        await until(lambda: len(seen) >= len(want), 10, "every change")
        await asyncio.sleep(0.3)
        assert seen == want
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        assert a.queue.status_changes() == []  # all offered
        # A coordinator taking the reporter over offers the recent ones again (the one before may have died).
        again = DatabaseFeed(b.queue, b.cluster.listener, takeover=60.0)  # type: ignore[arg-type]
        replay: list[tuple[int, str]] = []

        async def read_again() -> None:
            async for event in again():
                replay.append((event.job_id, event.state))  # type: ignore[union-attr]

        task = asyncio.create_task(read_again())
        await until(lambda: len(replay) == len(want), 10, "the replay")
        assert replay == want
        task.cancel()


async def test_the_status_feed_passes_on_the_step_events_of_either_coordinator(pg_url: str, tmp_path: Path) -> None:
    """"Running step 2/3: build" on PostgreSQL: the steps come from the cluster's events, between the changes."""
    async with node(pg_url, tmp_path / "a") as a, node(pg_url, tmp_path / "b") as b:
        assert a.cluster.listener is not None
        feed = DatabaseFeed(a.queue, a.cluster.listener, events=a.cluster.events, takeover=60.0)
        seen: list[tuple[int, str, str]] = []

        async def read() -> None:
            async for event in feed():
                assert isinstance(event, JobEvent)
                seen.append((event.job_id, event.kind, event.data.get("name", event.state)))

        reader = asyncio.create_task(read())
        job = b.queue.enqueue(SPEC)
        assert b.queue.claim("b", 60).id == job  # type: ignore[union-attr]
        await until(lambda: len(seen) == 2, 10, "queued and running")
        b.cluster.events.publish(JobEvent(job, "running", "step", {"index": 1, "name": "build", "total": 3}))
        await until(lambda: len(seen) == 3, 10, "the step event of the other coordinator")
        b.queue.complete(job, JobState.success, runner_id="b")
        await until(lambda: len(seen) == 4, 10, "the end")
        assert seen == [(job, "state", "queued"), (job, "state", "running"), (job, "step", "build"),
                        (job, "state", "success")]
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def test_maintenance_prunes_the_status_feed_and_the_log_chunks_of_deleted_jobs(pg_url: str,
                                                                                     tmp_path: Path) -> None:
    async with node(pg_url, tmp_path / "a") as a:
        job_id = a.queue.enqueue(SPEC)
        a.queue.add_log_chunk(job_id, [LogLine(1, 1.0, "", "system", "hello")])
        a.queue.add_log_chunk(999_999, [LogLine(1, 1.0, "", "system", "its job is gone")])
        assert a.queue.status_changes()  # the enqueue's, never offered (no coordinator posts here)
        assert a.queue.prune_status_changes(time.time() - 3600) == 0
        assert a.queue.prune_status_changes(time.time() + 1) >= 1
        assert a.queue.status_changes() == []
        assert a.queue.prune_log_chunks() == 1
        assert [line.text for line in a.queue.log_lines(job_id)] == ["hello"]
