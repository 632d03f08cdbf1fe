"""client.api against a live server: calls, errors, and a log follower that survives dropped connections."""

from __future__ import annotations

import asyncio

import pytest

from bot.keys import StreamTiming
from client.api import Client
from client.errors import APIError, AuthFailed, ServerUnreachable
from client.models import LogEnd, LogEntry
from config.settings import Settings
from runner.models import JobState
from tests.bot.api_helpers import (
    TOKEN,
    DroppingProxy,
    api_settings,
    enqueue,
    finish,
    free_port,
    live_server,
    write_log,
)

__all__ = ["api_settings"]

FAST = StreamTiming(keepalive=0.2, check=0.1)


async def test_calls_round_trip(api_settings: Settings) -> None:
    with live_server(api_settings) as server:
        async with Client(server.url) as client:
            steps = [{"name": "s", "run": "true"}]  # inline: planned at once, no fetch
            submitted = await client.submit("https://git.example.test/a/b.git", "main", sha="c" * 40, priority=7,
                                            env={"X": "1"}, steps=steps)
            job_id = submitted.job
            assert job_id is not None and submitted.jobs == (job_id,) and not submitted.planning
            assert (await client.pipeline(submitted.pipeline or 0)).job_ids == (job_id,)
            job = await client.job(job_id)
            assert job.state == "queued" and job.priority == 7 and job.raw["spec"]["env"] == {"X": "1"}
            await client.set_priority(job_id, 2)
            page = await client.list_jobs(order="dispatch")
            assert [j.id for j in page.jobs] == [job_id] and page.jobs[0].priority == 2 and page.next_cursor is None
            assert await client.cancel(job_id) == "cancelled"
            new_id = await client.retry(job_id)
            assert (await client.job(new_id)).raw["spec"]["meta"]["retry_of"] == str(job_id)
            assert (await client.metrics("hour")).jobs == 1
            with pytest.raises(APIError) as missing:
                await client.job(9999)
            assert missing.value.status == 404
            with pytest.raises(APIError) as finished:
                await client.cancel(job_id)
            assert finished.value.status == 409


async def test_an_unreachable_server_and_a_wrong_token_are_distinct_errors(api_settings: Settings) -> None:
    async with Client(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(ServerUnreachable, match="cannot reach"):
            await client.list_jobs()
    with live_server(api_settings, {"FORGECI_API_TOKEN": TOKEN}) as server:
        async with Client(server.url, "not-the-token") as client:
            with pytest.raises(AuthFailed, match="FORGECI_API_TOKEN"):
                await client.submit("r", "main")
        async with Client(server.url, TOKEN) as client:
            submitted = await client.submit("r", "main")  # accepted; "r" cannot be fetched: still planning
            assert (submitted.pipeline, submitted.job, submitted.planning) == (1, None, True)


async def test_a_follower_resumes_after_dropped_connections_without_loss_or_repeat(api_settings: Settings) -> None:
    with live_server(api_settings, timing=FAST) as server:
        runtime = server.runtime
        job_id = enqueue(runtime.queue)
        runtime.queue.claim("test-runner", 60)
        lines = [f"line {i:04d} " + "x" * 40 for i in range(600)]

        async def produce() -> None:  # on the server's loop, like a runner
            log = write_log(runtime, job_id, [])
            for i, text in enumerate(lines):
                log.write("build", "stdout", f"{text}\n".encode())
                if i % 20 == 0:
                    await asyncio.sleep(0.01)
            log.close()
            runtime.queue.complete(job_id, JobState.success, runner_id="test-runner")

        proxy = DroppingProxy(server.port, budget=6000)  # every connection breaks after ~6 kB of the stream
        await proxy.start()
        try:
            producer = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(produce(), server.loop))
            got: list[LogEntry] = []
            end = None
            async with Client(f"http://127.0.0.1:{proxy.port}", reconnect_for=30) as client:
                async for item in client.read_log(job_id):
                    if isinstance(item, LogEnd):
                        end = item
                    else:
                        got.append(item)
            await producer
        finally:
            await proxy.close()
    assert [line.text for line in got] == lines
    assert [line.n for line in got] == list(range(1, 601))
    assert end == LogEnd("success", 600)
    assert proxy.connections > 3  # it really did reconnect


async def test_logs_without_follow_return_what_is_there(api_settings: Settings) -> None:
    with live_server(api_settings) as server:
        queue = server.runtime.queue
        job_id = enqueue(queue)
        server.call(lambda: _write(server, job_id, ["one", "two"]))
        finish(queue, job_id, JobState.failure)
        async with Client(server.url) as client:
            items = [item async for item in client.read_log(job_id, follow=False)]
            assert [i.text for i in items if isinstance(i, LogEntry)] == ["one", "two"]
            assert items[-1] == LogEnd("failure", 2)
            after = [item async for item in client.read_log(job_id, after=1, follow=False)]
            assert [i.text for i in after if isinstance(i, LogEntry)] == ["two"]


async def _write(server, job_id: int, lines: list[str]) -> None:  # type: ignore[no-untyped-def]
    write_log(server.runtime, job_id, lines).close()
