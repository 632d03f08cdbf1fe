"""Service logs kept with a job: GET /jobs/logs?service= (replay, resume, follow by polling, 404 naming the
services) and a whole job with a service run on the fake engine, read back through the API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from aiohttp.test_utils import TestClient

from bot.keys import StreamTiming
from config.settings import Settings
from runner.logs import JobLog, Masker
from runner.models import JobSpec, JobState
from runner.runtime import Runtime
from runner.services import declared_services, service_log_names
from tests.bot.api_helpers import api_client, async_wait_until, enqueue, finish, parse_sse, runtime_of
from tests.bot.test_sse import end_of, lines_of, read_until
from tests.fake_engine import FakeEngine, Script, ServiceScript

FAST = StreamTiming(keepalive=0.2, check=0.1)
DB_IMAGE = "localhost/fake-postgres:15"


def service_log(runtime: Runtime, job_id: int, name: str, lines: list[str]) -> JobLog:
    path = runtime.layout.service_log_file(job_id, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = JobLog(path, job_id, None, Masker.empty())
    if lines:
        log.write(name, "stdout", "".join(f"{line}\n" for line in lines).encode())
    return log


def kept_job(client: TestClient, services: dict[str, list[str]], state: JobState = JobState.success) -> int:
    runtime = runtime_of(client)
    job_id = enqueue(runtime.queue)
    for name, lines in services.items():
        service_log(runtime, job_id, name, lines).close()
    finish(runtime.queue, job_id, state)
    return job_id


async def test_a_services_log_replays_as_events_and_resumes(settings: Settings) -> None:
    async with api_client(settings) as client:
        job_id = kept_job(client, {"db": [f"db {i}" for i in range(1, 11)], "redis": ["r"]}, JobState.failure)
        response = await client.get(f"/jobs/logs?id={job_id}&service=db")
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
        text = await response.text()
        assert lines_of(text) == [(i, f"db {i}") for i in range(1, 11)]
        assert end_of(text) == {"id": job_id, "state": "failure", "last": 10}
        for after in (0, 4, 10):
            resumed = await (await client.get(f"/jobs/logs?id={job_id}&service=db",
                                              headers={"Last-Event-ID": str(after)})).text()
            assert [n for n, _ in lines_of(resumed)] == list(range(after + 1, 11))
        once = await (await client.get(f"/jobs/logs?id={job_id}&service=redis&follow=false&after=0")).text()
        assert lines_of(once) == [(1, "r")] and end_of(once)["last"] == 1


async def test_an_unknown_or_invalid_service_is_a_404_naming_the_jobs_services(settings: Settings) -> None:
    async with api_client(settings) as client:
        job_id = kept_job(client, {"db": ["x"], "cache": ["y"]})
        for name in ("nope", "../../1", "db/x", "", "%00"):
            response = await client.get(f"/jobs/logs?id={job_id}&service={name}")
            assert response.status == 404, name
            body = await response.json()
            assert body["detail"]["services"] == ["cache", "db"]
        plain = kept_job(client, {})
        body = await (await client.get(f"/jobs/logs?id={plain}&service=db")).json()
        assert body["detail"]["services"] == []
        assert (await client.get("/jobs/logs?id=999999&service=db")).status == 404
        assert (await client.get(f"/jobs/logs?id={job_id}&service=db&follow=maybe")).status == 400


async def test_a_running_jobs_service_lines_are_polled_until_the_job_ends(settings: Settings) -> None:
    async with api_client(settings, timing=FAST) as client:
        runtime = runtime_of(client)
        job_id = enqueue(runtime.queue)
        runtime.queue.claim("test-runner", 60)
        log = service_log(runtime, job_id, "db", ["starting"])
        response = await client.get(f"/jobs/logs?id={job_id}&service=db")
        text = await read_until(response, lambda t: "starting" in t)
        log.write("db", "stdout", b"ready\n")
        text += await read_until(response, lambda t: "ready" in t)
        log.write("db", "stderr", b"shutting down\n")
        log.close()
        runtime.queue.complete(job_id, JobState.success, runner_id="test-runner")
        text += await read_until(response, lambda t: "event: end" in t)
        assert [t for _, t in lines_of(text)] == ["starting", "ready", "shutting down"]
        assert end_of(text) == {"id": job_id, "state": "success", "last": 3}


WITH_DB: dict[str, Any] = {"steps": [{"name": "test", "run": "psql"}], "services": {"db": {"image": DB_IMAGE}}}


async def test_a_declared_service_that_has_not_started_reads_like_a_job_log_with_no_lines_yet(
        settings: Settings) -> None:
    async with api_client(settings) as client:
        job_id = enqueue(runtime_of(client).queue, pipeline=WITH_DB)
        # Nothing written yet: it answers as the queued job's own log does.
        one = await client.get(f"/jobs/logs?id={job_id}&service=db&follow=false")
        plain = await client.get(f"/jobs/logs?id={job_id}&follow=false")
        assert one.status == plain.status == 200 and one.headers["Content-Type"] == plain.headers["Content-Type"]
        text, job_text = await one.text(), await plain.text()
        assert lines_of(text) == lines_of(job_text) == []
        assert end_of(text) == end_of(job_text) == {"id": job_id, "state": "queued", "last": 0}
        resumed = await (await client.get(f"/jobs/logs?id={job_id}&service=db&follow=false&after=7")).text()
        assert end_of(resumed) == {"id": job_id, "state": "queued", "last": 7}
        # A name the job does not declare stays a 404, naming the services it does.
        for name in ("redis", "db2", "../db", ""):
            response = await client.get(f"/jobs/logs?id={job_id}&service={name}&follow=false")
            assert response.status == 404, name
            assert (await response.json())["detail"]["services"] == ["db"]


async def test_following_a_declared_service_waits_for_it_to_start(settings: Settings) -> None:
    async with api_client(settings, timing=FAST) as client:
        runtime = runtime_of(client)
        job_id = enqueue(runtime.queue, pipeline=WITH_DB)
        response = await client.get(f"/jobs/logs?id={job_id}&service=db")
        assert response.status == 200
        waited = await read_until(response, lambda t: t.count(":") >= 2, timeout=30)  # keepalives, no lines
        assert lines_of(waited) == [] and "event: end" not in waited
        runtime.queue.claim("test-runner", 60)
        log = service_log(runtime, job_id, "db", ["database system is ready"])  # the service started
        text = await read_until(response, lambda t: "ready" in t, timeout=30)
        log.close()
        runtime.queue.complete(job_id, JobState.success, runner_id="test-runner")
        text += await read_until(response, lambda t: "event: end" in t, timeout=30)
        assert lines_of(waited + text) == [(1, "database system is ready")]
        assert end_of(text) == {"id": job_id, "state": "success", "last": 1}


async def test_a_planned_jobs_own_services_are_known_before_it_runs(settings: Settings) -> None:
    pipeline: dict[str, Any] = {"jobs": {
        "lint": {"steps": [{"run": "lint"}]},
        "test": {"needs": ["lint"], "steps": [{"run": "psql"}], "services": {"db": {"image": DB_IMAGE}}}}}
    async with api_client(settings) as client:  # no workers: the jobs stay queued
        runtime = runtime_of(client)
        submitted = await runtime.control.submit_pipeline(JobSpec(repo="https://git.example.test/a/b.git",
                                                                  ref="main", pipeline=pipeline))
        jobs = {runtime.queue.get(job_id).name: job_id for job_id in submitted.job_ids}
        assert set(jobs) == {"lint", "test"}
        for name, job_id in jobs.items():
            assert declared_services(runtime.queue.get(job_id).spec) == (["db"] if name == "test" else [])
        text = await (await client.get(f"/jobs/logs?id={jobs['test']}&service=db&follow=false")).text()
        assert lines_of(text) == [] and end_of(text)["last"] == 0
        lint = await client.get(f"/jobs/logs?id={jobs['lint']}&service=db&follow=false")
        assert lint.status == 404 and (await lint.json())["detail"]["services"] == []


async def test_a_job_with_a_service_on_the_fake_engine_keeps_its_log_for_the_api(
        settings: Settings, make_local_repo: Callable[..., tuple[Path, str]]) -> None:
    engine = FakeEngine()
    engine.images |= {DB_IMAGE}
    engine.service("db", ServiceScript(lines=["database system is ready"]))
    engine.on("psql", Script(lines=["ok"]))
    repo = make_local_repo({"README": "services\n"})[0]
    pipeline = WITH_DB
    async with api_client(settings, workers=True, engine=engine, timing=FAST) as client:
        runtime = runtime_of(client)
        job_id = await runtime.control.submit(JobSpec(repo=str(repo), ref="main", pipeline=pipeline))
        # The file exists once the service started (before that the name reads as a log with no lines yet).
        await async_wait_until(lambda: service_log_names(runtime.layout, job_id) == ["db"])
        text = await (await client.get(f"/jobs/logs?id={job_id}&service=db")).text()  # followed to the end
        assert "database system is ready" in [t for _, t in lines_of(text)]
        assert end_of(text)["state"] == "success"
        missing = await (await client.get(f"/jobs/logs?id={job_id}&service=redis")).json()
        assert missing["detail"]["services"] == ["db"]
        assert json.loads(parse_sse(text)[0]["data"])["text"].startswith(f"service db: {DB_IMAGE}")


# -- the dashboard's job page -----------------------------------------------------------------------


async def test_the_job_page_shows_each_kept_service_log_escaped_with_a_raw_link(settings: Settings) -> None:
    async with api_client(settings) as client:
        job_id = kept_job(client, {"db": ["\x1b[32mready\x1b[0m", "<script>alert(1)</script> &"], "redis": []})
        html = await (await client.get(f"/dashboard/jobs/{job_id}")).text()
        assert 'id="service-db"' in html and 'id="service-redis"' in html and "Service db" in html
        assert '<span class="a-fg2">ready</span>' in html and "db-L2" in html
        assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp;" in html
        assert f'href="/dashboard/jobs/{job_id}/service/db/log.txt"' in html
        raw = await client.get(f"/dashboard/jobs/{job_id}/service/db/log.txt")
        assert raw.status == 200 and raw.headers["Content-Type"].startswith("text/plain")
        assert await raw.text() == "ready\n<script>alert(1)</script> &\n"
        assert raw.headers["Content-Disposition"] == f'inline; filename="job-{job_id}-db.log"'
        for name in ("cache", "db%2F..%2F..", "-x", "a" * 70):  # ("..": the client resolves it first)
            assert (await client.get(f"/dashboard/jobs/{job_id}/service/{name}/log.txt")).status == 404, name
        assert (await client.get("/dashboard/jobs/999999/service/db/log.txt")).status == 404
        plain = kept_job(client, {})
        assert "service-log" not in await (await client.get(f"/dashboard/jobs/{plain}")).text()


async def test_a_running_jobs_page_shows_its_service_log_so_far(settings: Settings) -> None:
    async with api_client(settings) as client:
        runtime = runtime_of(client)
        job_id = enqueue(runtime.queue)
        runtime.queue.claim("test-runner", 60)
        log = service_log(runtime, job_id, "db", ["starting"])
        html = await (await client.get(f"/dashboard/jobs/{job_id}")).text()
        assert 'id="service-db"' in html and "starting" in html and "the raw log has what came since" in html
        log.close()
