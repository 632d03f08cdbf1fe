"""The pipelines' API: the list and its pages, one pipeline with its DAG (depths, needs, why a job waits), cancel,
retry (whole or failed), the jobs' wait reasons, and the pipeline metrics; on the fake engine."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from bot.pipelines_api import job_depths
from config.settings import Settings
from runner.models import Job, JobSpec, JobState
from tests.bot.api_helpers import api_client, api_settings, finish, runtime_of
from tests.bot.test_api import error_of
from tests.fake_engine import FakeEngine, Script

__all__ = ["api_settings"]

REPO = "https://git.example.test/acme/app.git"
MakeRepo = Callable[..., tuple[Path, str]]
DIAMOND = ''.join(f'[jobs.{name}]\nneeds = {needs}\nsteps = [{{ name = "{name}", run = "step-{name}" }}]\n'
                  for name, needs in (("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])))
MATRIX = ('[jobs.lint]\nsteps = [{ run = "lint" }]\n'
          '[jobs.test]\nneeds = ["lint"]\nmatrix = { python = ["3.11", "3.12"] }\nsteps = [{ run = "test" }]\n'
          '[jobs.build]\nneeds = ["test"]\nsteps = [{ run = "build" }]\n')
PIPELINE_KEYS = {"id", "repo", "ref", "sha", "event", "state", "created_at", "started_at", "finished_at", "error",
                 "job_ids", "jobs_total", "jobs_done", "duration", "spec"}
JOB_KEYS = {"id", "name", "display", "needs", "state", "error", "started_at", "finished_at", "duration", "attempts",
            "waiting", "wait_reason", "depth"}


def with_queue(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, queue=dataclasses.replace(settings.queue, **changes))


async def submit(client: TestClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/jobs/submit", json={"repo": REPO, "ref": "main", **body})
    assert response.status == 201, await response.text()
    return dict(await response.json())


async def inline(client: TestClient, repo: str = REPO) -> dict[str, Any]:
    return await submit(client, repo=repo, steps=[{"name": "s", "run": "true"}])


async def get(client: TestClient, path: str) -> Any:
    response = await client.get(path)
    assert response.status == 200, await response.text()
    return await response.json()


async def until_finished(client: TestClient, pipeline_id: int, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await get(client, f"/pipelines/{pipeline_id}")
        if found["state"] not in ("planning", "queued", "running"):
            return dict(found)
        await asyncio.sleep(0.02)
    raise AssertionError(f"pipeline {pipeline_id} did not finish")


async def test_pipelines_are_listed_newest_first_in_pages_and_filtered(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        made = [await inline(client, repo) for repo in (REPO, REPO, "https://git.example.test/acme/web.git")]
        queue = runtime_of(client).queue
        finish(queue, made[0]["id"])
        page = await get(client, "/pipelines")
        assert [p["id"] for p in page["pipelines"]] == [m["pipeline"] for m in reversed(made)]
        assert page["next_cursor"] is None
        first = page["pipelines"][-1]
        assert PIPELINE_KEYS <= set(first)
        assert (first["state"], first["job_ids"], first["jobs_total"], first["jobs_done"]) == (
            "success", [made[0]["id"]], 1, 1)
        assert first["duration"] == first["finished_at"] - queue.get(made[0]["id"]).queued_at >= 0
        assert first["spec"]["repo"] == REPO and first["event"] == "manual" and first["spec"]["event"] == "manual"
        running = page["pipelines"][0]
        assert (running["state"], running["jobs_done"], running["duration"]) == ("queued", 0, None)

        one = await get(client, "/pipelines?limit=1")
        rest = await get(client, f"/pipelines?limit=5&cursor={one['next_cursor']}")
        assert [p["id"] for p in one["pipelines"] + rest["pipelines"]] == [m["pipeline"] for m in reversed(made)]
        assert rest["next_cursor"] is None
        assert [p["id"] for p in (await get(client, "/pipelines?status=success"))["pipelines"]] == [
            made[0]["pipeline"]]
        web = await get(client, "/pipelines?repo=https://git.example.test/acme/web.git")
        assert [p["id"] for p in web["pipelines"]] == [made[2]["pipeline"]]
        for query in ("colour=red", "limit=0", "limit=1001", "limit=x", "status=bogus", "status=timeout",
                      "cursor=nonsense", "cursor=WyJuZXdlc3QiLCAzXQ"):  # the last: a /jobs cursor
            await error_of(await client.get(f"/pipelines?{query}"), 400)


async def test_a_pipeline_shows_its_dag_with_depths_needs_and_why_each_job_waits(
        api_settings: Settings, make_local_repo: MakeRepo) -> None:
    repo, sha = make_local_repo({".forgeci.toml": DIAMOND})
    async with api_client(api_settings) as client:
        answer = await submit(client, repo=str(repo))
        a, b, c, d = answer["jobs"]
        found = await get(client, f"/pipelines/{answer['pipeline']}")
        assert PIPELINE_KEYS | {"jobs"} <= set(found) and found["sha"] == sha and found["jobs_total"] == 4
        assert all(set(job) >= JOB_KEYS for job in found["jobs"])
        assert [(j["id"], j["name"], j["needs"], j["depth"], j["waiting"], j["wait_reason"]) for j in found["jobs"]] \
            == [(a, "a", [], 0, False, "next in line"), (b, "b", ["a"], 1, True, "waits for a"),
                (c, "c", ["a"], 1, True, "waits for a"), (d, "d", ["b", "c"], 2, True, "waits for b, c")]

        queue = runtime_of(client).queue
        finish(queue, a)
        finish(queue, b, JobState.failure, (("b", "failure"),))
        assert queue.claim("test-runner", 60) is not None  # c runs
        found = await get(client, f"/pipelines/{answer['pipeline']}")
        jobs = {j["name"]: j for j in found["jobs"]}
        assert (found["state"], found["jobs_done"], found["duration"]) == ("running", 2, None)
        assert (jobs["a"]["state"], jobs["b"]["state"], jobs["c"]["state"]) == ("success", "failure", "running")
        assert jobs["c"]["wait_reason"] is None and jobs["c"]["attempts"] == 1 and jobs["c"]["duration"] is None
        assert jobs["a"]["duration"] is not None and jobs["a"]["duration"] >= 0
        assert jobs["d"]["wait_reason"] == "waits for c"
        queue.complete(c, JobState.success, runner_id="test-runner")
        found = await get(client, f"/pipelines/{answer['pipeline']}")
        jobs = {j["name"]: j for j in found["jobs"]}
        assert (found["state"], found["jobs_done"]) == ("failure", 4)
        assert found["duration"] is not None and found["duration"] >= jobs["a"]["duration"]
        assert (jobs["d"]["state"], jobs["d"]["error"], jobs["d"]["wait_reason"]) == (
            "skipped", "not run: b ended failure", None)


async def test_a_matrix_and_its_dependant_sit_one_column_deeper_each(
        api_settings: Settings, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": MATRIX})
    async with api_client(api_settings) as client:
        answer = await submit(client, repo=str(repo))
        found = await get(client, f"/pipelines/{answer['pipeline']}")
    assert [(j["display"], j["depth"]) for j in found["jobs"]] == [
        ("lint", 0), ("test (python=3.11)", 1), ("test (python=3.12)", 1), ("build", 2)]
    assert found["jobs"][3]["wait_reason"] == "waits for test"


def test_depths_ignore_unknown_needs_and_survive_a_cycle() -> None:
    def job(job_id: int, name: str, *needs: str) -> Job:
        return Job(id=job_id, spec=JobSpec(repo="r", ref="main"), state=JobState.queued, name=name, needs=needs)

    assert job_depths([job(1, "a", "ghost"), job(2, "b", "a", "ghost"), job(3, "c", "b"), job(4, "d", "a")]) == {
        1: 0, 2: 1, 3: 2, 4: 1}
    cycle = job_depths([job(1, "x", "y"), job(2, "y", "x")])
    assert set(cycle.values()) <= {0, 1}


async def test_an_unknown_pipeline_or_a_bad_id_is_an_error_for_every_pipeline_route(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        for method, suffix in (("GET", ""), ("POST", "/cancel"), ("POST", "/retry")):
            error = await error_of(await client.request(method, f"/pipelines/99{suffix}"), 404)
            assert error["detail"] == "pipeline 99 not found"
            await error_of(await client.request(method, f"/pipelines/x{suffix}"), 400)


async def test_cancel_stops_a_pipeline_and_refuses_a_finished_one(api_settings: Settings,
                                                                  make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": DIAMOND})
    async with api_client(api_settings) as client:
        answer = await submit(client, repo=str(repo))
        pipeline_id = answer["pipeline"]
        await error_of(await client.post(f"/pipelines/{pipeline_id}/cancel", json={"now": True}), 400)
        response = await client.post(f"/pipelines/{pipeline_id}/cancel")
        assert response.status == 200
        assert await response.json() == {"id": pipeline_id, "state": "cancelled", "cancel_requested": True}
        found = await get(client, f"/pipelines/{pipeline_id}")
        assert {j["state"] for j in found["jobs"]} == {"cancelled"} and found["jobs_done"] == 4
        error = await error_of(await client.post(f"/pipelines/{pipeline_id}/cancel"), 409)
        assert "it is cancelled" in str(error["detail"])


async def test_cancel_of_a_running_pipeline_answers_running_while_its_jobs_stop(
        api_settings: Settings, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({"README": "x\n"})
    engine = FakeEngine()
    engine.on("sleepy", Script(hang=True))
    async with api_client(api_settings, workers=True, engine=engine) as client:
        answer = await submit(client, repo=str(repo), steps=[{"name": "s", "run": "sleepy"}])
        queue = runtime_of(client).queue
        deadline = time.monotonic() + 20
        while not engine.execs and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        response = await client.post(f"/pipelines/{answer['pipeline']}/cancel")
        assert (response.status, (await response.json())["state"]) == (200, "running")
        found = await until_finished(client, answer["pipeline"])
        assert found["state"] == "cancelled" and queue.get(answer["id"]).state is JobState.cancelled


async def test_retry_runs_the_failed_jobs_again_or_a_whole_new_pipeline(api_settings: Settings,
                                                                         make_local_repo: MakeRepo) -> None:
    repo, sha = make_local_repo({".forgeci.toml": DIAMOND})
    async with api_client(api_settings) as client:
        answer = await submit(client, repo=str(repo))
        pipeline_id, (a, b, c, d) = answer["pipeline"], answer["jobs"]
        path = f"/pipelines/{pipeline_id}/retry"
        error = await error_of(await client.post(path), 409)  # not finished
        assert "only a finished one" in str(error["detail"])
        queue = runtime_of(client).queue
        finish(queue, a)
        finish(queue, b, JobState.failure, (("b", "failure"),))
        finish(queue, c)
        for body in ({"failed_only": "yes"}, {"colour": "red"}):
            await error_of(await client.post(path, json=body), 400)
        response = await client.post(path, json={"failed_only": True})
        assert response.status == 201
        assert await response.json() == {"pipeline": pipeline_id, "jobs": [b, d], "retry_of": pipeline_id}
        assert response.headers["Location"] == f"/pipelines/{pipeline_id}"
        found = await get(client, f"/pipelines/{pipeline_id}")
        assert [j["state"] for j in found["jobs"]] == ["success", "queued", "success", "queued"]
        # running: some of its jobs are done (the pipeline has started), others wait
        assert found["state"] == "running" and found["finished_at"] is None and found["duration"] is None
        finish(queue, b)
        finish(queue, d)
        assert (await get(client, f"/pipelines/{pipeline_id}"))["state"] == "success"
        error = await error_of(await client.post(path, json={"failed_only": True}), 409)
        assert "no failed job" in str(error["detail"])

        response = await client.post(path)  # the whole pipeline: a new one at the same sha
        assert response.status == 201
        again = await response.json()
        assert again["pipeline"] != pipeline_id and len(again["jobs"]) == 4 and again["retry_of"] == pipeline_id
        new = await get(client, f"/pipelines/{again['pipeline']}")
        assert new["sha"] == sha and new["spec"]["meta"]["retry_of_pipeline"] == str(pipeline_id)


async def test_the_dispatch_queue_and_a_job_say_why_each_queued_job_waits(api_settings: Settings,
                                                                          make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": DIAMOND})
    async with api_client(with_queue(api_settings, max_concurrent=1)) as client:
        answer = await submit(client, repo=str(repo))
        a = answer["jobs"][0]
        loose = await inline(client)
        queue = runtime_of(client).queue
        page = await get(client, "/jobs?order=dispatch")
        assert [(j["id"], j["wait_reason"]) for j in page["jobs"]] == [
            (a, "next in line"), (answer["jobs"][1], "waits for a"), (answer["jobs"][2], "waits for a"),
            (answer["jobs"][3], "waits for b, c"), (loose["id"], "next in line")]
        assert queue.claim("test-runner", 60) is not None  # a runs: the one slot is taken
        page = await get(client, "/jobs?order=dispatch")
        assert page["jobs"][-1]["wait_reason"] == "no free slot: 1 of 1 running"
        assert (await get(client, f"/jobs/status?id={loose['id']}"))["wait_reason"] == "no free slot: 1 of 1 running"
        assert (await get(client, f"/jobs/status?id={a}"))["wait_reason"] is None  # running
        assert "wait_reason" not in (await get(client, "/jobs"))["jobs"][0]  # newest first: no reasons read


async def test_pipelines_run_end_to_end_and_count_in_the_metrics(api_settings: Settings,
                                                                  make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": DIAMOND})
    engine = FakeEngine()
    engine.on("step-b", Script(delay=0.2))
    engine.on("step-c", Script(exit_code=1))
    async with api_client(with_queue(api_settings, max_concurrent=4), workers=True, engine=engine) as client:
        good = await submit(client, repo=str(repo), steps=[{"name": "s", "run": "true"}])
        bad = await submit(client, repo=str(repo))
        assert (await until_finished(client, good["pipeline"]))["state"] == "success"
        found = await until_finished(client, bad["pipeline"])
        assert found["state"] == "failure" and found["duration"] > 0.2
        assert [j["state"] for j in found["jobs"]] == ["success", "success", "failure", "skipped"]
        assert all(j["duration"] is not None for j in found["jobs"][:3])
        metrics = await get(client, "/metrics?range=hour")
        pipelines = metrics["pipelines"]
        assert (pipelines["total"], pipelines["by_state"], pipelines["success_rate"]) == (
            2, {"success": 1, "failure": 1}, 0.5)
        assert 0 < pipelines["avg_duration"] <= pipelines["p95_duration"] == found["duration"]
        text = await (await client.get("/metrics?range=hour&format=prometheus")).text()
    assert 'forgeci_pipelines{range="hour",state="failure"} 1' in text
    assert 'forgeci_pipelines_finished{range="hour"} 2' in text
    assert 'forgeci_pipeline_success_ratio{range="hour"} 0.5' in text
    assert "forgeci_pipeline_duration_p95_seconds" in text and "forgeci_pipeline_duration_avg_seconds" in text
