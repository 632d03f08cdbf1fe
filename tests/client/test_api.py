"""client.api against a respx-faked API: requests as the contract says, answers parsed, errors translated."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import respx

from client.api import Client
from client.errors import APIError, AuthFailed, BadResponse, ClientError, ServerUnreachable
from client.models import CacheStats, LogEnd, LogEntry, Submission
from tests.client.fake_api import BASE, NOW, FakeApi, make_job, sse


async def test_jobs_are_parsed_from_the_servers_own_shape(api: FakeApi) -> None:
    async with Client(BASE) as client:
        page = await client.list_jobs(status="queued", limit=1)
        mine = await client.list_jobs(repo="https://github.com/acme/app.git", order="dispatch")
        job = await client.job(2)
    assert dict(api.calls("GET", "/jobs")[0].url.params) == {"order": "newest", "limit": "1", "status": "queued"}
    assert dict(api.calls("GET", "/jobs")[1].url.params) == {"order": "dispatch", "limit": "100",
                                                             "repo": "https://github.com/acme/app.git"}
    assert [j.id for j in page.jobs] == [5] and page.next_cursor == "more"
    assert [j.id for j in mine.jobs] == [4] and mine.next_cursor is None
    assert (job.id, job.state, job.ref, job.priority, job.cache_hit, job.duration) == (
        2, "failure", "refs/heads/feature/login", 5, False, 35.0)
    assert [(s.name, s.state, s.exit_code, s.duration) for s in job.steps] == [
        ("install", "success", 0, 19.0), ("test", "failure", 1, 15.0)]


async def test_actions_send_the_bodies_of_the_contract(api: FakeApi) -> None:
    async with Client(BASE, "s3cret") as client:
        submitted = await client.submit("https://github.com/acme/app.git", "main", sha="abcdef1", priority=3)
        assert (submitted.job, submitted.jobs, submitted.pipeline, submitted.planning) == (7, (7,), 1, False)
        assert await client.cancel(7) == "cancelled"
        assert await client.retry(7, from_failed_step=True) == 8
        await client.set_priority(8, 9)
        await client.delete_cache("acme/app/main/3f2a9c")
        assert "s3cret" not in repr(client)
    assert api.bodies("/jobs/submit") == [{"repo": "https://github.com/acme/app.git", "ref": "main",
                                           "sha": "abcdef1", "priority": 3}]
    assert api.bodies("/jobs/cancel") == [{"id": 7}]
    assert api.bodies("/jobs/retry") == [{"id": 7, "from_failed_step": True}]
    assert api.bodies("/jobs/priority") == [{"id": 8, "priority": 9}]
    assert all(r.headers["Authorization"] == "Bearer s3cret" for r in api.requests)


def test_a_submit_answer_is_a_planned_pipeline_one_still_planning_or_an_old_server_s_job() -> None:
    planned = Submission.from_dict({"id": 3, "pipeline": 2, "jobs": [3, 4, 5]})
    assert (planned.job, planned.jobs, planned.pipeline, planned.planning) == (3, (3, 4, 5), 2, False)
    planning = Submission.from_dict({"id": None, "pipeline": 2, "jobs": [], "planning": True})
    assert (planning.job, planning.jobs, planning.pipeline, planning.planning) == (None, (), 2, True)
    old = Submission.from_dict({"id": 9})  # a server from before pipelines
    assert (old.job, old.jobs, old.pipeline) == (9, (9,), None)
    for answer in ({}, {"id": "9"}, {"pipeline": True}, [1]):
        with pytest.raises(BadResponse):
            Submission.from_dict(answer)


async def test_first_job_waits_while_the_pipeline_is_planned(api: FakeApi) -> None:
    async with Client(BASE) as client:
        submitted = await client.submit("https://github.com/acme/unreachable.git", "main")
        assert submitted.planning and submitted.job is None and submitted.pipeline is not None
        assert (await client.pipeline(submitted.pipeline)).error == "cannot fetch the pipeline: connection refused"

        async def planned_later() -> None:
            await asyncio.sleep(0.2)
            api.pipelines[submitted.pipeline or 0] |= {"state": "queued", "job_ids": [41, 42], "error": None}

        later = asyncio.create_task(planned_later())
        assert await client.first_job(submitted, poll=0.05) == 41
        await later
        api.pipelines[submitted.pipeline] |= {"state": "error", "job_ids": []}
        assert await client.first_job(submitted, poll=0.05) is None  # it ended without a job
        with pytest.raises(APIError) as missing:
            await client.pipeline(99)
        assert missing.value.status == 404


async def test_errors_are_translated(api: FakeApi) -> None:
    async with Client(BASE) as client:
        with pytest.raises(APIError) as bad:
            await client.set_priority(4, 11)
        assert bad.value.status == 400 and bad.value.details == [
            "request: priority: expected an integer 0..10, got 11"]
        with pytest.raises(APIError, match="409 wrong state"):
            await client.cancel(1)
        with pytest.raises(APIError, match="404 not found") as missing:
            await client.job(99)
        assert missing.value.status == 404
        api.token = "other"
        with pytest.raises(AuthFailed, match="refused the API token.*FORGECI_API_TOKEN"):
            await client.list_jobs()
        api.down = True
        with pytest.raises(ServerUnreachable, match="cannot reach the forgeci server at http://forgeci.test"):
            await client.metrics("hour")
        with pytest.raises(ServerUnreachable):
            async with client.events():
                pass


async def test_a_non_json_answer_is_a_bad_response() -> None:
    with respx.mock() as router:
        router.get(f"{BASE}/metrics").respond(200, text="<html>proxy login</html>")
        router.get(f"{BASE}/events").respond(200, text="<html>", headers={"Content-Type": "text/html"})
        async with Client(BASE) as client:
            with pytest.raises(BadResponse, match="did not answer with JSON"):
                await client.metrics()
            with pytest.raises(BadResponse, match="not an event stream"):
                async with client.events() as events:
                    async for _ in events:
                        pass


async def test_event_stream_skips_keepalives_and_malformed_events(api: FakeApi) -> None:
    async with Client(BASE) as client:
        async with client.events() as events:
            feed = api.event_feeds[0]
            feed.send(b": keep-alive\n\n")
            feed.send(b"event: job\ndata: {not json\n\n")
            feed.send(sse({"state": "queued"}, event="job"))  # no job id
            api.publish(4, "running", "step", index=0, name="install", total=2)
            event = await anext(events)
    assert (event.job_id, event.state, event.kind, dict(event.data)) == (
        4, "running", "step", {"index": 0, "name": "install", "total": 2})
    assert event.t == NOW


async def test_log_stream_resumes_with_last_event_id_and_ends(api: FakeApi) -> None:
    api.add(make_job(9, state="running"))
    api.log(9, "one", "two", "three")
    api.end_log(9)
    async with Client(BASE) as client:
        async with client.logs(9, after=1) as lines:
            got = [line async for line in lines]
    assert got == [LogEntry(2, "build", "stdout", "two"), LogEntry(3, "build", "stdout", "three"),
                   LogEnd("success", 3)]
    request = api.calls("GET", "/jobs/logs")[0]
    assert request.headers["Last-Event-ID"] == "1" and request.url.params["id"] == "9"
    assert request.headers["Accept"] == "text/event-stream"


async def test_a_stream_that_breaks_off_is_unreachable(api: FakeApi) -> None:
    async with Client(BASE) as client:
        with pytest.raises(ServerUnreachable, match="lost the stream /events"):
            async with client.events() as events:
                api.event_feeds[0].send(httpx.ReadError("reset"))
                async for _ in events:
                    pass


def test_cache_stats_take_totals_from_the_top_or_a_totals_object() -> None:
    entry = {"key": "a/main/1", "repo": "a", "size": 10, "hits": 2, "created_at": 1.0, "last_used": 2.0}
    flat = CacheStats.from_dict({"entries": [entry], "total_size": 99, "hit_rate": 0.5})
    nested = CacheStats.from_dict({"items": [entry], "totals": {"entries": 1, "bytes": 77, "hits": 2,
                                                                "hit_rate": 0.25}})
    bare = CacheStats.from_dict({"entries": [entry, {**entry, "key": "a/main/2", "size": 5}]})
    assert (flat.total_size, flat.hit_rate, [e.key for e in flat.entries]) == (99, 0.5, ["a/main/1"])
    assert (nested.total_size, nested.hit_rate, len(nested.entries)) == (77, 0.25, 1)
    assert (bare.total_size, bare.hit_rate) == (15, None)


def test_every_client_error_is_a_forgeci_error() -> None:
    from config.errors import ForgeciError

    for error in (ServerUnreachable, AuthFailed, BadResponse, APIError):
        assert issubclass(error, ClientError)
    assert issubclass(ClientError, ForgeciError)


async def test_read_log_resumes_after_a_break_and_a_torn_event_without_loss_or_repeat(api: FakeApi) -> None:
    api.add(make_job(9, state="running"))
    api.log(9, "one", "two")
    got: list[LogEntry | LogEnd] = []
    async with Client(BASE) as client:
        async for item in client.read_log(9):
            got.append(item)
            if item == LogEntry(2, "build", "stdout", "two"):
                api.break_streams()  # the connection drops; "three" is written meanwhile
                api.log(9, "three")
            elif item == LogEntry(3, "build", "stdout", "three"):
                api.log_feeds[9][0].send(b"data: {\"n\": 4, \"te\n\n")  # an event that is not whole
                api.log(9, "four")
                api.end_log(9)
    texts = ["one", "two", "three", "four"]
    assert got == [*(LogEntry(n, "build", "stdout", text) for n, text in enumerate(texts, 1)), LogEnd("success", 4)]
    assert [r.headers.get("Last-Event-ID") for r in api.calls("GET", "/jobs/logs")] == [None, "2", "3"]


async def test_read_log_fails_at_once_for_a_missing_job_or_a_server_never_reached(api: FakeApi) -> None:
    async with Client(BASE) as client:
        with pytest.raises(APIError) as missing:
            [item async for item in client.read_log(99)]
        assert missing.value.status == 404
        api.down = True
        with pytest.raises(ServerUnreachable, match="cannot reach"):
            [item async for item in client.read_log(3)]
    assert len(api.calls("GET", "/jobs/logs")) == 2  # no retries: neither waits out anything
