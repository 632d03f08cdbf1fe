"""Live logs and events over SSE: numbering, exact resume, live lines, keep-alives, cleanup, many followers."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient

from bot.app import create_app
from bot.keys import RUNTIME, STREAM_TIMING, StreamTiming
from config.settings import Settings
from runner.models import JobState
from tests.fake_engine import FakeEngine
from tests.bot.api_helpers import (
    api_client,
    api_settings,
    async_wait_until,
    enqueue,
    finish,
    free_port,
    parse_sse,
    runtime_of,
    write_log,
)

__all__ = ["api_settings"]

FAST = StreamTiming(keepalive=0.2, check=0.1)


def lines_of(text: str) -> list[tuple[int, str]]:
    return [(int(e["id"]), json.loads(e["data"])["text"]) for e in parse_sse(text) if "id" in e]


def end_of(text: str) -> dict[str, object]:
    ends = [json.loads(e["data"]) for e in parse_sse(text) if e.get("event") == "end"]
    assert len(ends) == 1, text
    return ends[0]


async def read_until(response: aiohttp.ClientResponse, predicate, timeout: float = 10) -> str:  # type: ignore[no-untyped-def]
    text = ""
    async with asyncio.timeout(timeout):
        while not predicate(text):
            chunk = await response.content.readany()
            if not chunk:
                break
            text += chunk.decode()
    return text


async def finished_job(client: TestClient, lines: list[str], state: JobState = JobState.success) -> int:
    runtime = runtime_of(client)
    job_id = enqueue(runtime.queue)
    write_log(runtime, job_id, lines).close()
    finish(runtime.queue, job_id, state)
    return job_id


async def test_a_finished_job_replays_its_log_one_event_per_line_and_closes(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        job_id = await finished_job(client, [f"line {i} <b>&" for i in range(1, 51)], JobState.failure)
        response = await client.get(f"/jobs/logs?id={job_id}")
        assert response.headers["Content-Type"].startswith("text/event-stream")
        text = await response.text()  # the server closes the stream
        assert lines_of(text) == [(i, f"line {i} <b>&") for i in range(1, 51)]
        event = json.loads(parse_sse(text)[0]["data"])
        assert set(event) == {"n", "t", "step", "stream", "text"} and event["step"] == "build"
        assert end_of(text) == {"id": job_id, "state": "failure", "last": 50}


async def test_last_event_id_resumes_exactly_after_that_line(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        job_id = await finished_job(client, [f"l{i}" for i in range(1, 21)])
        for after in (0, 1, 7, 19, 20, 25):
            text = await (await client.get(f"/jobs/logs?id={job_id}", headers={"Last-Event-ID": str(after)})).text()
            assert [n for n, _ in lines_of(text)] == list(range(after + 1, 21))
            same = await (await client.get(f"/jobs/logs?id={job_id}&after={after}")).text()
            assert lines_of(same) == lines_of(text)
        bad = await client.get(f"/jobs/logs?id={job_id}", headers={"Last-Event-ID": "x1"})
        assert bad.status == 400


async def test_a_running_jobs_lines_arrive_as_written_then_the_end(api_settings: Settings) -> None:
    async with api_client(api_settings, timing=FAST) as client:
        runtime = runtime_of(client)
        job_id = enqueue(runtime.queue)
        runtime.queue.claim("test-runner", 60)
        log = write_log(runtime, job_id, ["before"])
        response = await client.get(f"/jobs/logs?id={job_id}")
        text = await read_until(response, lambda t: "before" in t)
        for i in range(3):
            log.write("build", "stdout", f"live {i}\n".encode())
            text += await read_until(response, lambda t, i=i: f"live {i}" in t)  # each before the next exists
        log.close()
        runtime.queue.complete(job_id, JobState.success, runner_id="test-runner")
        text += await read_until(response, lambda t: "event: end" in t)
        assert [t for _, t in lines_of(text)] == ["before", "live 0", "live 1", "live 2"]
        assert end_of(text)["state"] == "success"


async def test_a_retried_attempt_keeps_the_stream_open_and_numbering_goes_on(api_settings: Settings) -> None:
    async with api_client(api_settings, timing=FAST) as client:
        runtime = runtime_of(client)
        job_id = enqueue(runtime.queue)
        runtime.queue.claim("test-runner", 60)
        response = await client.get(f"/jobs/logs?id={job_id}")
        first = write_log(runtime, job_id, ["attempt 1"])
        first.close()  # the attempt ends; an infrastructure fault sends the job back to the queue
        runtime.queue.fail_infra(job_id, "engine died", "test-runner")
        runtime.queue.claim("test-runner", 60)
        second = write_log(runtime, job_id, ["attempt 2"])
        second.close()
        runtime.queue.complete(job_id, JobState.success, runner_id="test-runner")
        text = await read_until(response, lambda t: "event: end" in t)
        assert lines_of(text) == [(1, "attempt 1"), (2, "attempt 2")]


async def test_keep_alive_comments_flow_while_nothing_happens(api_settings: Settings) -> None:
    async with api_client(api_settings, timing=FAST) as client:
        job_id = enqueue(runtime_of(client).queue)  # queued: no line yet
        response = await client.get(f"/jobs/logs?id={job_id}")
        text = await read_until(response, lambda t: t.count(": keep-alive") >= 3, timeout=10)
        assert text.count(": keep-alive") >= 3 and not lines_of(text)
        events = await client.get("/events")
        assert ": keep-alive" in await read_until(events, lambda t: ": keep-alive" in t)


async def test_a_client_that_goes_away_frees_its_subscriptions(api_settings: Settings) -> None:
    async with api_client(api_settings, timing=FAST) as client:
        runtime = runtime_of(client)
        job_id = enqueue(runtime.queue)
        runtime.queue.claim("test-runner", 60)
        log = write_log(runtime, job_id, ["x"])
        own = runtime.events.subscriber_count  # the server's own consumers (the agent API's wake-ups)
        async with aiohttp.ClientSession() as session:
            logs = [await session.get(client.make_url(f"/jobs/logs?id={job_id}")) for _ in range(5)]
            events = [await session.get(client.make_url("/events")) for _ in range(3)]
            for response in logs:
                await read_until(response, lambda t: "data:" in t)
            await async_wait_until(lambda: runtime.hub.followers(job_id) == 5 and runtime.events.subscriber_count == own + 3)
            for response in logs + events:
                response.close()
        await async_wait_until(lambda: runtime.hub.followers(job_id) == 0 and runtime.events.subscriber_count == own)
        log.close()


async def test_a_hundred_followers_of_one_job_get_every_line_once_in_order(api_settings: Settings) -> None:
    async with api_client(api_settings, timing=FAST) as client:
        runtime = runtime_of(client)
        job_id = enqueue(runtime.queue)
        runtime.queue.claim("test-runner", 60)
        log = write_log(runtime, job_id, ["first"])
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            responses = [await session.get(client.make_url(f"/jobs/logs?id={job_id}")) for _ in range(100)]
            await async_wait_until(lambda: runtime.hub.followers(job_id) == 100)
            for i in range(500):
                log.write("build", "stdout", f"line {i}\n".encode())
                if i % 50 == 0:
                    await asyncio.sleep(0.01)
            log.close()
            runtime.queue.complete(job_id, JobState.success, runner_id="test-runner")
            texts = await asyncio.gather(*(read_until(r, lambda t: "event: end" in t, 60) for r in responses))
        expected = [(1, "first")] + [(i + 2, f"line {i}") for i in range(500)]
        for text in texts:
            assert lines_of(text) == expected


async def test_without_follow_the_lines_so_far_then_the_current_state(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        runtime = runtime_of(client)
        job_id = enqueue(runtime.queue)
        runtime.queue.claim("test-runner", 60)
        log = write_log(runtime, job_id, ["a", "b"])
        text = await (await client.get(f"/jobs/logs?id={job_id}&follow=false")).text()
        assert lines_of(text) == [(1, "a"), (2, "b")]
        assert end_of(text) == {"id": job_id, "state": "running", "last": 2}
        log.close()
        assert (await client.get(f"/jobs/logs?id={job_id}&follow=maybe")).status == 400


async def test_events_carry_submit_priority_and_cancel_as_they_happen(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        events = await client.get("/events")
        body = {"repo": "r", "ref": "main", "steps": [{"name": "s", "run": "true"}]}  # inline: planned at once
        answer = await (await client.post("/jobs/submit", json=body)).json()
        job_id, pipeline_id = answer["id"], answer["pipeline"]
        await client.post("/jobs/priority", json={"id": job_id, "priority": 8})
        await client.post("/jobs/cancel", json={"id": job_id})
        text = await read_until(events, lambda t: t.count('"cancelled"') == 2)  # the job's, then its pipeline's
        got = [(e["event"], json.loads(e["data"])) for e in parse_sse(text)]
        assert [(kind, e.get("job_id", e.get("pipeline_id")), e["state"], e["kind"]) for kind, e in got] == [
            ("pipeline", pipeline_id, "planning", "pipeline"), ("job", job_id, "queued", "state"),
            ("pipeline", pipeline_id, "queued", "pipeline"), ("job", job_id, "queued", "priority"),
            ("job", job_id, "cancelled", "state"), ("pipeline", pipeline_id, "cancelled", "pipeline")]
        assert got[1][1]["data"] == {"pipeline": pipeline_id} and got[2][1]["data"] == {"jobs": [job_id]}
        assert got[3][1]["data"] == {"priority": 8}


async def test_a_shutdown_ends_open_streams_instead_of_waiting_for_them(api_settings: Settings) -> None:
    app = create_app(api_settings, {}, workers=False, engine=FakeEngine())
    app[STREAM_TIMING] = StreamTiming(keepalive=5, check=0.1)
    runner = web.AppRunner(app, shutdown_timeout=60)  # without the closing flag, cleanup would wait this long
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    async with aiohttp.ClientSession() as session:
        events = await session.get(f"http://127.0.0.1:{port}/events")
        job_id = enqueue(app[RUNTIME].queue)
        logs = await session.get(f"http://127.0.0.1:{port}/jobs/logs?id={job_id}")
        start = time.monotonic()
        await runner.cleanup()
        assert time.monotonic() - start < 30  # a generous bound: the streams ended, the 60 s grace was not needed
        for response in (events, logs):
            assert await asyncio.wait_for(response.content.read(), 10) is not None  # read to the end: closed
