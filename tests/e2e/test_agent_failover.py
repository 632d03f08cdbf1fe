"""An agent with several server URLs (`forgeci agent --server A --server B`): a stopped or failing first URL falls
over to the next, a coordinator lost mid-job moves the job's reports (heartbeats, log lines, steps, result) to the
next without a requeue, and the agent then stays with the URL that works. The fake engine runs the jobs; the
coordinators are real aiohttp servers: one on a SQLite queue reached through fault proxies (tests/reliability/
proxy.py) that stand for coordinators which can die, and two with data dirs of their own on one PostgreSQL queue,
the first shut down mid-job."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from config.settings import Settings
from runner.agent.agent import Agent
from runner.agent.client import AgentClient, Unreachable
from runner.logs import read_log
from runner.models import JobSpec, JobState
from tests.e2e.test_agents_fake import (
    S3_ENV,
    MakeRepo,
    agent_settings,
    coordinator,
    runtime,
    shared,
    wait_for,
)
from tests.fake_engine import FakeEngine, Script
from tests.reliability.proxy import FaultProxy
from tests.runner.test_store import MotoServer, moto_server

__all__ = ["moto_server"]

TICKS = 30


@pytest.fixture
def base(fake_settings: Settings, moto_server: MotoServer) -> Settings:
    # A short lease: heartbeats every second, so several of them must find their way after the failover.
    return shared(fake_settings, moto_server, f"f{int(time.time() * 1000)}", lease_seconds=3)


def closed_port() -> str:
    """A loopback URL nothing listens on (a stopped coordinator): connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@asynccontextmanager
async def proxy(server: TestServer, mode: str = "pass") -> AsyncIterator[FaultProxy]:
    one = FaultProxy(str(server.make_url("")).rstrip("/"), mode=mode)  # type: ignore[arg-type]
    await one.start()
    try:
        yield one
    finally:
        await one.close()


@asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[Agent]:
    task = asyncio.create_task(agent.run())
    try:
        yield agent
    finally:
        agent.stop()
        await asyncio.wait_for(task, 60)


def ticking(engine: FakeEngine) -> None:
    engine.on("tick", Script(lines=[f"tick {i}" for i in range(TICKS)], interval=0.1))


def agent_paths(fault: FaultProxy, since: int = 0) -> list[str]:
    return [seen.path for seen in fault.seen[since:]]


async def test_a_stopped_and_a_failing_first_server_fall_over_to_the_next(
        base: Settings, tmp_path: Path, make_local_repo: MakeRepo) -> None:
    repo, sha = make_local_repo({".forgeci.toml": '[[steps]]\nname = "s"\nrun = "tick"\n'})
    engine = FakeEngine()
    ticking(engine)
    async with coordinator(base) as server, proxy(server, "error") as failing:
        rt = runtime(server)
        token = rt.queue.create_agent_token("solo")
        direct = str(server.make_url("")).rstrip("/")
        one = Agent(agent_settings(base, tmp_path, "a1"), [closed_port(), failing.endpoint, direct], token,
                    label="a1", environ=S3_ENV, engine=engine)
        async with running(one):
            job_id = await rt.control.submit(JobSpec(repo=str(repo), ref="main", sha=sha))
            await wait_for(lambda: rt.queue.get(job_id).state.is_terminal)
            assert one.client.server == direct  # and it stays there
        job = rt.queue.get(job_id)
        assert (job.state, job.attempts) == (JobState.success, 1), job.error
        assert any(path.endswith("/agent/v1/claim") for path in agent_paths(failing))  # it was asked, answered 500
        assert failing.count("error") == len(failing.seen)
        texts = [line.text for line in read_log(rt.layout.log_file(job_id))]
        assert [t for t in texts if t.startswith("tick ")] == [f"tick {i}" for i in range(TICKS)]


async def test_a_coordinator_lost_mid_job_hands_its_reports_to_the_next_and_the_agent_stays_there(
        base: Settings, tmp_path: Path, make_local_repo: MakeRepo) -> None:
    repo, sha = make_local_repo({".forgeci.toml": '[[steps]]\nname = "s"\nrun = "tick"\n'})
    engine = FakeEngine()
    ticking(engine)
    async with coordinator(base) as server, proxy(server) as first, proxy(server) as second:
        rt = runtime(server)
        token = rt.queue.create_agent_token("solo")
        one = Agent(agent_settings(base, tmp_path, "a1"), [first.endpoint, second.endpoint], token, label="a1",
                    environ=S3_ENV, engine=engine)
        async with running(one):
            job_id = await rt.control.submit(JobSpec(repo=str(repo), ref="main", sha=sha))
            log = rt.layout.log_file(job_id)
            await wait_for(lambda: any(line.text == "tick 5" for line in read_log(log)))
            assert second.seen == []  # sticky: while the first answers, nothing goes to the second
            port = first.port
            await first.down()  # mid-job: the claim, the heartbeats and the first log batches went through it
            await wait_for(lambda: rt.queue.get(job_id).state.is_terminal)
            job = rt.queue.get(job_id)
            assert (job.state, job.attempts) == (JobState.success, 1), job.error  # no requeue, no lost lease
            reported = agent_paths(second)
            for call in ("heartbeat", "log", "result"):
                assert f"/agent/v1/jobs/{job_id}/{call}" in reported, reported
            lines = list(read_log(log))
            assert [line.n for line in lines] == list(range(1, len(lines) + 1))  # no gap, no line twice
            assert [ln.text for ln in lines if ln.text.startswith("tick ")] == [f"tick {i}" for i in range(TICKS)]
            # The first is back; the agent stays with the second, which works.
            await first.start(port)
            seen_before = len(first.seen)
            again = await rt.control.submit(JobSpec(repo=str(repo), ref="main", sha=sha))
            await wait_for(lambda: rt.queue.get(again).state.is_terminal)
            assert rt.queue.get(again).state is JobState.success
            assert agent_paths(first, seen_before) == []
            assert f"/agent/v1/jobs/{again}/result" in agent_paths(second)


async def test_a_coordinator_whose_log_ends_before_the_next_batch_gets_the_missing_lines_from_the_agent(
        base: Settings, tmp_path: Path, make_local_repo: MakeRepo) -> None:
    """What an agent meets when it moves to a coordinator that lacks the job's earlier lines (another one received
    them and did not pass them on, as a coordinator killed before its lines reached the database): that one
    answers 422 "log gap"; the agent sends the attempt's missing lines from its own copy, then the batch. Here the
    coordinator's file of the job is emptied mid-job, which leaves it in that state."""
    from bot.agent_api import AGENTS

    repo, sha = make_local_repo({".forgeci.toml": '[[steps]]\nname = "s"\nrun = "tick"\n'})
    engine = FakeEngine()
    ticking(engine)
    async with coordinator(base) as server:
        rt = runtime(server)
        token = rt.queue.create_agent_token("solo")
        one = Agent(agent_settings(base, tmp_path, "a1"), str(server.make_url("")), token, label="a1",
                    environ=S3_ENV, engine=engine)
        async with running(one):
            job_id = await rt.control.submit(JobSpec(repo=str(repo), ref="main", sha=sha))
            log = rt.layout.log_file(job_id)
            await wait_for(lambda: any(line.text == "tick 5" for line in read_log(log)))
            log.write_text("")  # the coordinator's log of the job ends at line 0 now
            server.app[AGENTS].logs._last.pop(job_id, None)
            await wait_for(lambda: rt.queue.get(job_id).state.is_terminal)
        assert rt.queue.get(job_id).state is JobState.success
        lines = list(read_log(log))
        assert [line.n for line in lines] == list(range(1, len(lines) + 1))
        assert [ln.text for ln in lines if ln.text.startswith("tick ")] == [f"tick {i}" for i in range(TICKS)]


async def test_every_server_down_backs_off_and_names_each_of_them() -> None:
    servers = [closed_port(), closed_port()]
    async with AgentClient(servers, "fca_not-in-any-message") as client:
        started = time.monotonic()
        with pytest.raises(Unreachable) as gone:
            await client.call("/claim", {}, give_up_after=1.0, timeout=1.0)
        assert time.monotonic() - started < 10
    message = str(gone.value)
    assert all(f"{server}: ClientConnectorError" in message for server in servers), message
    assert "fca_" not in repr(client) + message and all(server in repr(client) for server in servers)


async def test_two_coordinators_on_one_postgresql_queue_an_agent_moves_to_the_second_when_the_first_stops(
        base: Settings, tmp_path: Path, make_local_repo: MakeRepo, pg_url: str) -> None:
    """Two coordinators (data dirs of their own) on one PostgreSQL queue; the agent lists both. The first is shut
    down mid-job: the job's reports go to the second, which records its result (no requeue, one attempt)."""
    repo, sha = make_local_repo({".forgeci.toml": '[[steps]]\nname = "s"\nrun = "tick"\n'})
    engine = FakeEngine()
    ticking(engine)
    on_pg = dataclasses.replace(base, queue=dataclasses.replace(base.queue, url=pg_url))
    async with contextlib.AsyncExitStack() as stack:
        second = await stack.enter_async_context(coordinator(dataclasses.replace(on_pg, data_dir=tmp_path / "b")))
        first_cm = coordinator(dataclasses.replace(on_pg, data_dir=tmp_path / "a"))
        first = await first_cm.__aenter__()
        first_open = True
        try:
            token = runtime(first).queue.create_agent_token("solo")  # a row of the shared queue: both know it
            urls = [str(server.make_url("")).rstrip("/") for server in (first, second)]
            one = Agent(agent_settings(base, tmp_path, "a1"), urls, token, label="a1", environ=S3_ENV,
                        engine=engine)
            async with running(one):
                job_id = await runtime(first).control.submit(JobSpec(repo=str(repo), ref="main", sha=sha))
                await wait_for(lambda: any(line.text == "tick 5"
                                           for line in read_log(runtime(first).layout.log_file(job_id))))
                first_open = False
                await first_cm.__aexit__(None, None, None)  # coordinator A goes away mid-job
                queue = runtime(second).queue  # the same rows, through the other coordinator
                await wait_for(lambda: queue.get(job_id).state.is_terminal)
                job = queue.get(job_id)
                assert (job.state, job.attempts) == (JobState.success, 1), job.error
                assert one.client.server == urls[1]
                # The log as the second coordinator serves it is whole and in order: the lines that went through
                # the first one and the rest (on PostgreSQL the coordinators read logs from the database).
                rt = runtime(second)
                lines = rt.hub.read(job_id, rt.layout.log_file(job_id))
                assert [line.n for line in lines] == list(range(1, len(lines) + 1))
                assert [ln.text for ln in lines if ln.text.startswith("tick ")] == [f"tick {i}" for i in range(TICKS)]
        finally:
            if first_open:
                await first_cm.__aexit__(None, None, None)
