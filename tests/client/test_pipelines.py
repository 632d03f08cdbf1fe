"""client.api's pipeline calls against the respx fake: requests as the contract says, answers parsed (jobs with
their depth and wait reasons), errors translated; pipeline events and metrics; the CLI's tree of a pipeline."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bot.metrics import Metrics as ServerMetrics
from client.api import Client
from client.errors import APIError, BadResponse
from client.models import JobInfo, Metrics, PipelineInfo, PipelineServerEvent, ServerEvent
from client.pipeline_commands import describe_pipeline
from runner.models import Job, JobState, RangeStats
from runner.queue import PipelineStats
from tests.client.fake_api import BASE, NOW, T0, FakeApi, make_job, metrics_body, sse


def diamond(api: FakeApi, pipeline_id: int = 10, first: int = 20) -> list[Job]:
    """A diamond (a -> b, c -> d) under way: a succeeded, b runs, c waits for a slot, d for b and c."""
    a, b, c, d = (make_job(first + i, state=state, started_at=T0 + 1 if state != "queued" else None,
                           finished_at=T0 + 4 if state == "success" else None, attempts=int(state != "queued"))
                  for i, state in enumerate(("success", "running", "queued", "queued")))
    jobs = [replace(a, name="a", display="a"), replace(b, name="b", display="b", needs=("a",)),
            replace(c, name="c", display="c", needs=("a",)),
            replace(d, name="d", display="d", needs=("b", "c"), waiting=True)]
    api.wait_reasons.update({c.id: "no free slot: 2 of 2 running", d.id: "waits for b, c"})
    api.add_pipeline(pipeline_id, jobs, "running", started_at=T0 + 1)
    return jobs


async def test_pipelines_are_listed_and_parsed_from_the_servers_own_shape(api: FakeApi) -> None:
    diamond(api, 10, 20)
    api.add_pipeline(11, [make_job(30, state="failure", started_at=T0, finished_at=T0 + 9)], "failure",
                     finished_at=T0 + 9)
    async with Client(BASE) as client:
        page = await client.pipelines(status="failure", repo="https://github.com/acme/app.git", limit=5)
        everything = await client.pipelines(limit=1)
    assert dict(api.calls("GET", "/pipelines")[0].url.params) == {
        "limit": "5", "status": "failure", "repo": "https://github.com/acme/app.git"}
    [failed] = page.pipelines
    assert (failed.id, failed.state, failed.job_ids, failed.jobs_total, failed.jobs_done) == (11, "failure", (30,), 1, 1)
    assert (failed.repo, failed.ref, failed.event, failed.duration, failed.terminal) == (
        "https://github.com/acme/app.git", "refs/heads/main", "push", 9.0, True)
    assert failed.raw["spec"]["repo"] == failed.repo and page.next_cursor is None
    assert [p.id for p in everything.pipelines] == [11] and everything.next_cursor == "more"


async def test_a_pipeline_comes_with_its_jobs_depths_and_why_they_wait(api: FakeApi) -> None:
    diamond(api)
    async with Client(BASE) as client:
        found = await client.pipeline(10)
        with pytest.raises(APIError) as missing:
            await client.pipeline(99)
    assert [r.url.path for r in api.requests] == ["/pipelines/10", "/pipelines/99"] and missing.value.status == 404
    assert (found.state, found.jobs_total, found.jobs_done, found.duration, found.terminal) == (
        "running", 4, 1, None, False)
    assert [(j.id, j.display, j.needs, j.depth, j.state, j.wait_reason) for j in found.jobs] == [
        (20, "a", (), 0, "success", None), (21, "b", ("a",), 1, "running", None),
        (22, "c", ("a",), 1, "queued", "no free slot: 2 of 2 running"), (23, "d", ("b", "c"), 2, "queued",
                                                                           "waits for b, c")]
    assert found.jobs[0].duration == 3.0 and found.jobs[3].waiting and found.jobs[0].terminal


async def test_cancel_and_retry_send_the_contract_and_translate_wrong_states(api: FakeApi) -> None:
    jobs = diamond(api)
    async with Client(BASE) as client:
        assert await client.cancel_pipeline(10) == "running"  # b still runs
        assert [api.jobs[j.id].state for j in jobs] == ["success", "running", "cancelled", "cancelled"]
        with pytest.raises(APIError, match="409 wrong state") as early:
            await client.retry_pipeline(10)
        assert "only a finished one" in str(early.value)
        api.set_state(21, "failure")
        api.pipelines[10]["state"] = "failure"
        with pytest.raises(APIError, match="409 wrong state"):
            await client.cancel_pipeline(10)
        whole = await client.retry_pipeline(10)
        again = await client.retry_pipeline(10, failed_only=True)
    assert [r.url.path for r in api.requests if r.method == "POST"] == [
        "/pipelines/10/cancel", "/pipelines/10/retry", "/pipelines/10/cancel", "/pipelines/10/retry",
        "/pipelines/10/retry"]
    assert api.bodies("/pipelines/10/retry") == [{"failed_only": False}, {"failed_only": False},
                                                 {"failed_only": True}]
    assert (again.pipeline, again.jobs, again.planning) == (10, (21, 22, 23), False)  # failed, and cancelled
    assert whole.pipeline == 11 and len(whole.jobs) == 4 and not whole.planning


def test_a_pipeline_answer_without_an_id_or_a_state_is_refused_and_jobs_are_lenient() -> None:
    for answer in ({}, {"id": 1}, {"id": "1", "state": "running"}, {"id": 1, "state": "x", "jobs": [{"id": 2}]}):
        with pytest.raises(BadResponse):
            PipelineInfo.from_dict(answer)
    old = PipelineInfo.from_dict({"id": 1, "state": "queued", "job_ids": [3, 4]})  # before /pipelines/{id}
    assert (old.jobs_total, old.jobs, old.repo, old.cancel_requested) == (2, (), "", False)
    listed = PipelineInfo.from_dict({"id": 7, "state": "running", "job_ids": [1, 2, True, "3"], "jobs_total": 2,
                                     "jobs_done": 1, "started_at": 11, "cancel_requested": True, "jobs": [
                                         {"id": 2, "name": "test", "display": None, "needs": ["lint"],
                                          "state": "running", "depth": 1, "cancel_requested": True}]})
    assert (listed.job_ids, listed.jobs_done, listed.started_at, listed.cancel_requested) == ((1, 2), 1, 11.0, True)
    assert [(j.display, j.depth, j.cancel_requested) for j in listed.jobs] == [("test", 1, True)]


async def test_pipeline_events_come_only_to_who_asks_for_them(api: FakeApi) -> None:
    async with Client(BASE) as client:
        async with client.events(pipelines=True) as events:
            feed = api.event_feeds[0]
            feed.send(sse({"pipeline_id": 7, "state": "running", "kind": "pipeline", "data": {}, "t": NOW},
                          event="pipeline"))
            feed.send(sse({"state": "running"}, event="pipeline"))  # malformed: skipped
            api.publish(4, "running")
            first, second = await anext(events), await anext(events)
        async with client.events() as jobs_only:
            api.event_feeds[-1].send(sse({"pipeline_id": 7, "state": "success", "data": {}}, event="pipeline"))
            api.publish(5, "queued")
            only = await anext(jobs_only)
    assert isinstance(first, PipelineServerEvent) and (first.pipeline_id, first.state, first.t) == (7, "running", NOW)
    assert isinstance(second, ServerEvent) and second.job_id == 4
    assert isinstance(only, ServerEvent) and only.job_id == 5


def test_metrics_and_jobs_carry_the_pipeline_figures_and_fields() -> None:
    stats = RangeStats(since=T0, until=NOW, states={s.value: 0 for s in JobState if s.is_terminal}, avg_duration=None, p95_duration=None, cache_hits=0,
                       cache_lookups=0, bucket_seconds=60.0, buckets=())
    body = ServerMetrics("day", stats, 0, 0, pipelines=PipelineStats({"success": 3, "failure": 1, "cancelled": 1}, 40.0, 90.0)).to_dict()
    metrics = Metrics.from_dict(body)
    assert (metrics.pipelines, dict(metrics.pipeline_by_state), metrics.pipeline_success_rate) == (
        5, {"success": 3, "failure": 1, "cancelled": 1}, 0.75)  # a cancelled pipeline was a decision
    assert (metrics.pipeline_avg_duration, metrics.pipeline_p95_duration) == (40.0, 90.0)
    assert Metrics.from_dict(metrics_body("day", 3)).pipelines == 0
    job = JobInfo.from_dict({**replace(make_job(3), pipeline_id=2, name="test", display="test (python=3.12)",
                                       needs=("lint",), waiting=True).to_dict(), "wait_reason": "waits for lint"})
    assert (job.pipeline_id, job.name, job.display, job.needs, job.waiting, job.wait_reason) == (
        2, "test", "test (python=3.12)", ("lint",), True, "waits for lint")
    plain = JobInfo.from_dict(make_job(4).to_dict())
    assert (plain.pipeline_id, plain.name, plain.display, plain.needs, plain.wait_reason) == (None, "", "", (), None)


async def test_the_tree_of_a_pipeline_groups_its_jobs_by_depth(api: FakeApi) -> None:
    diamond(api)
    async with Client(BASE) as client:
        text = describe_pipeline(await client.pipeline(10))
    assert text.splitlines() == [
        "pipeline 10: running (1 of 4 jobs done)",
        "  repo   https://github.com/acme/app.git",
        "  ref    refs/heads/main @ 0123456789ab    event push",
        "  ├─ depth 0",
        "  │  └─ 20 a           success        3s",
        "  ├─ depth 1",
        "  │  ├─ 21 b  <- a     running         –",
        "  │  └─ 22 c  <- a     queued          –  no free slot: 2 of 2 running",
        "  └─ depth 2",
        "     └─ 23 d  <- b, c  queued          –  waits for b, c",
    ]
