"""Agents on the fake engine, in this process: the coordinator (embedded = false) on a real aiohttp server and
SQLite queue, agents talking HTTP to it, moto's S3 server as the shared store. Coordination only; the spread over
two agents on real Podman, and kill -9, are in test_agents.py."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bot.app import create_app
from bot.keys import RUNTIME
from config.settings import SecretSpec, Settings, StorageSettings
from runner.agent.agent import Agent
from runner.agent.wire import API
from runner.logs import read_log
from runner.models import JobSpec, JobState
from runner.runtime import Runtime
from tests.fake_engine import FakeEngine, Script
from tests.runner.test_store import MotoServer, moto_server

__all__ = ["moto_server"]

MakeRepo = Callable[..., tuple[Path, str]]
PIPELINE = """
snapshot = "never"
[jobs.build]
artifacts = { paths = ["dist/**"] }
[[jobs.build.steps]]
name = "build"
run = "make"
[jobs.test]
needs = ["build"]
[[jobs.test.steps]]
name = "test"
run = "check"
"""


def shared(settings: Settings, moto: MotoServer, bucket: str, **queue: Any) -> Settings:
    storage = StorageSettings(url=moto.url(bucket))
    return dataclasses.replace(settings, storage=storage, queue=dataclasses.replace(settings.queue, **queue),
                               runner=dataclasses.replace(settings.runner, embedded=False))


S3_ENV = {"FORGECI_S3_ACCESS_KEY": "k", "FORGECI_S3_SECRET_KEY": "s"}


@asynccontextmanager
async def coordinator(settings: Settings, environ: dict[str, str] | None = None) -> AsyncIterator[TestServer]:
    app = create_app(settings, {**S3_ENV, **(environ or {})}, workers=True, engine=FakeEngine())
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


def runtime(server: TestServer) -> Runtime:
    return server.app[RUNTIME]


@asynccontextmanager
async def agent(settings: Settings, server: TestServer, token: str, label: str,
                engine: FakeEngine) -> AsyncIterator[Agent]:
    one = Agent(settings, str(server.make_url("")), token, label=label, environ=S3_ENV, engine=engine)
    task = asyncio.create_task(one.run())
    try:
        yield one
    finally:
        one.stop()
        await asyncio.wait_for(task, 60)


async def wait_for(check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


@pytest.fixture
def base(fake_settings: Settings, moto_server: MotoServer, tmp_path: Path) -> Settings:
    return shared(fake_settings, moto_server, f"b{int(time.time() * 1000)}")


def agent_settings(base: Settings, tmp_path: Path, name: str) -> Settings:
    return dataclasses.replace(base, data_dir=tmp_path / name)


async def test_two_agents_run_a_pipeline_with_an_artifact_between_them(
        base: Settings, tmp_path: Path, make_local_repo: MakeRepo) -> None:
    repo, sha = make_local_repo({".forgeci.toml": PIPELINE})
    one, two = FakeEngine(), FakeEngine()
    for engine in (one, two):
        engine.on("make", Script(lines=["building"], files={"dist/app.txt": "the build"}, delay=0.5))
        engine.on("check", Script(lines=["checked"]))
    async with coordinator(base) as server:
        rt = runtime(server)
        token_one = rt.queue.create_agent_token("one")
        token_two = rt.queue.create_agent_token("two")
        async with agent(agent_settings(base, tmp_path, "a1"), server, token_one, "a1", one), \
                agent(agent_settings(base, tmp_path, "a2"), server, token_two, "a2", two):
            submitted = await rt.control.submit_pipeline(JobSpec(repo=str(repo), ref="main", sha=sha))
            await wait_for(lambda: rt.queue.pipeline(submitted.pipeline_id).state.is_terminal)
            jobs = rt.queue.pipeline(submitted.pipeline_id)
            got = {rt.queue.get(j).name: rt.queue.get(j) for j in jobs.job_ids}
            assert got["build"].state is JobState.success, got
            assert got["test"].state is JobState.success, got
            assert all(job.runner_id and job.runner_id.startswith("agent:") for job in got.values())
            text = [line.text for line in read_log(rt.layout.log_file(got["test"].id))]
            assert any("checked" in t for t in text), text
            assert any("artifacts" in t for t in text), text


async def test_stale_lease_is_refused_with_409_and_wrong_token_401(base: Settings) -> None:
    async with coordinator(base) as server:
        rt = runtime(server)
        token = rt.queue.create_agent_token("solo")
        url = str(server.make_url(API))
        job_id = await rt.control.submit(JobSpec(repo="/nowhere", ref="main"))
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            async with http.post(f"{url}/claim", json={"label": "x", "wait": 5}) as r:
                assert r.status == 200
                first = await r.json()
            assert first["job"]["id"] == job_id
            await asyncio.to_thread(rt.queue.expire_leases)  # not yet: the lease is fresh
            rt.queue._clock = lambda: time.time() + 3600  # the lease is long gone
            await rt.control.expire_leases()
            rt.queue._clock = time.time
            async with http.post(f"{url}/claim", json={"label": "y", "wait": 5}) as r:
                second = await r.json()
            assert second["job"]["id"] == job_id and second["lease"]["attempt"] == 2
            stale = {"lease": first["lease"]["id"], "outcome": {"state": "failure", "error": "stale"}}
            async with http.post(f"{url}/jobs/{job_id}/result", json=stale) as r:
                assert r.status == 409, await r.text()
                assert (await r.json())["error"] == "lease lost"
            fresh = {"lease": second["lease"]["id"], "outcome": {"state": "success"}}
            async with http.post(f"{url}/jobs/{job_id}/result", json=fresh) as r:
                assert r.status == 200
            async with http.post(f"{url}/jobs/{job_id}/result", json=fresh) as r:  # a resend: same answer
                assert (r.status, (await r.json())["state"]) == (200, "success")
        assert rt.queue.get(job_id).state is JobState.success
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer wrong"}) as http:
            async with http.post(f"{url}/claim", json={"wait": 0}) as r:
                assert r.status == 401 and (await r.json())["error"] == "unauthorized"
        rt.queue.revoke_agent_token("solo")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            async with http.post(f"{url}/claim", json={"wait": 0}) as r:
                assert r.status == 403 and (await r.json())["error"] == "token revoked"


async def test_log_batches_are_idempotent_and_masked_with_the_servers_secrets(base: Settings) -> None:
    settings = dataclasses.replace(base, secrets={"DEPLOY": SecretSpec(env="DEPLOY_KEY")})
    async with coordinator(settings, {"DEPLOY_KEY": "hunter2-value"}) as server:
        rt = runtime(server)
        token = rt.queue.create_agent_token("solo")
        url = str(server.make_url(API))
        job_id = await rt.control.submit(JobSpec(repo="/nowhere", ref="main"))
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            async with http.post(f"{url}/claim", json={"wait": 5}) as r:
                lease = (await r.json())["lease"]["id"]

            def lines(*numbers: int) -> dict[str, Any]:
                return {"lease": lease, "lines": [{"n": n, "t": 1.0, "s": "", "o": "stdout",
                                                   "x": f"line {n} hunter2-value"} for n in numbers]}
            for batch in (lines(1, 2, 3), lines(2, 3, 4), lines(1, 2, 3, 4, 5)):
                async with http.post(f"{url}/jobs/{job_id}/log", json=batch) as r:
                    assert r.status == 200
            async with http.post(f"{url}/jobs/{job_id}/log", json=lines(9)) as r:
                assert r.status == 422
        stored = list(read_log(rt.layout.log_file(job_id)))
        assert [line.n for line in stored] == [1, 2, 3, 4, 5]
        assert [line.text for line in stored] == [f"line {n} ***" for n in range(1, 6)]


async def test_a_file_store_is_refused(fake_settings: Settings) -> None:
    from config.errors import ConfigError

    with pytest.raises(ConfigError, match="s3:// object store"):
        Agent(fake_settings, "http://127.0.0.1:1", "t", label="x", engine=FakeEngine())


async def test_secrets_reach_a_loopback_agent(base: Settings, tmp_path: Path, make_local_repo: MakeRepo) -> None:
    repo, sha = make_local_repo({".forgeci.toml": 'secrets = ["DEPLOY"]\n[[steps]]\nname = "s"\nrun = "show"\n'})
    settings = dataclasses.replace(base, secrets={"DEPLOY": SecretSpec(env="DEPLOY_KEY")})
    engine = FakeEngine()
    engine.on("show", Script(lines=["key=$DEPLOY"]))
    async with coordinator(settings, {"DEPLOY_KEY": "hunter2-value"}) as server:
        rt = runtime(server)
        token = rt.queue.create_agent_token("solo")
        async with agent(agent_settings(base, tmp_path, "a1"), server, token, "a1", engine):
            job_id = await rt.control.submit(JobSpec(repo=str(repo), ref="main", sha=sha))
            await wait_for(lambda: rt.queue.get(job_id).state.is_terminal)
        assert rt.queue.get(job_id).state is JobState.success
        text = [line.text for line in read_log(rt.layout.log_file(job_id))]
        assert "key=***" in text, text  # received (the fake expands it) and masked by the agent


@pytest.mark.parametrize(("proxies", "proto", "handed"), [
    ((), None, True),  # loopback
    (("127.0.0.1",), "https", True),  # a trusted proxy that terminated TLS
    (("127.0.0.1",), "http", False),  # a trusted proxy whose client used plain http
])
async def test_secrets_are_handed_only_over_https_or_loopback(
        base: Settings, proxies: tuple[str, ...], proto: str | None, handed: bool) -> None:
    settings = dataclasses.replace(base, secrets={"DEPLOY": SecretSpec(env="DEPLOY_KEY")},
                                   server=dataclasses.replace(base.server, trusted_proxies=proxies))
    async with coordinator(settings, {"DEPLOY_KEY": "hunter2-value"}) as server:
        rt = runtime(server)
        token = rt.queue.create_agent_token("solo")
        pipeline = {"secrets": ["DEPLOY"], "steps": [{"name": "s", "run": "true"}]}
        job_id = await rt.control.submit(JobSpec(repo="https://git.example.test/acme/app.git", ref="main",
                                                 pipeline=pipeline))
        headers = {"Authorization": f"Bearer {token}", **({"X-Forwarded-Proto": proto} if proto else {})}
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.post(str(server.make_url(f"{API}/claim")), json={"wait": 5}) as r:
                assert r.status == 200
                data = await r.json()
        assert data["job"]["id"] == job_id
        assert data["secrets"]["values"] == ({"DEPLOY": "hunter2-value"} if handed else {})
        assert set(data["secrets"]["specs"]) == {"DEPLOY"}
        text = [line.text for line in read_log(rt.layout.log_file(job_id))]
        withheld = [t for t in text if t.startswith("secrets withheld (DEPLOY)")]
        assert bool(withheld) is not handed, text
        if withheld:
            assert "plain http from 127.0.0.1" in withheld[0] and data["log_base"] == 1


async def test_a_cancel_reaches_the_job_on_its_agent(base: Settings, tmp_path: Path, make_local_repo: MakeRepo) -> None:
    repo, sha = make_local_repo({".forgeci.toml": '[[steps]]\nname = "s"\nrun = "forever"\n'})
    engine = FakeEngine()
    engine.on("forever", Script(lines=["started"], hang=True))
    async with coordinator(base) as server:
        rt = runtime(server)
        token = rt.queue.create_agent_token("solo")
        async with agent(agent_settings(base, tmp_path, "a1"), server, token, "a1", engine):
            job_id = await rt.control.submit(JobSpec(repo=str(repo), ref="main", sha=sha))
            await wait_for(lambda: any(line.text == "started" for line in read_log(rt.layout.log_file(job_id))))
            follower = asyncio.create_task(_lines(rt, job_id))
            assert await rt.control.cancel(job_id) is JobState.running
            await wait_for(lambda: rt.queue.get(job_id).state.is_terminal)
            assert rt.queue.get(job_id).state is JobState.cancelled
            texts = await asyncio.wait_for(follower, 30)  # the live follower ends with the job
            assert "started" in texts
        assert not engine.containers


async def _lines(rt: Runtime, job_id: int) -> list[str]:
    return [line.text async for line in rt.hub.follow(job_id, rt.layout.log_file(job_id),
                                                      done=lambda: rt.queue.get(job_id).state.is_terminal)]


async def test_index_writes_are_only_for_the_agents_own_running_job(base: Settings) -> None:
    async with coordinator(base) as server:
        rt = runtime(server)
        mine, theirs = rt.queue.create_agent_token("mine"), rt.queue.create_agent_token("theirs")
        url = str(server.make_url(API))
        job_id = await rt.control.submit(JobSpec(repo="/nowhere", ref="main"))
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {mine}"}) as http:
            async with http.post(f"{url}/claim", json={"wait": 5}) as r:
                assert r.status == 200
            call = {"op": "set_cache_hit", "args": {"job_id": job_id, "hit": True}}
            async with http.post(f"{url}/index", json=call) as r:
                assert r.status == 200, await r.text()
            async with http.post(f"{url}/index", json={"op": "drop_everything", "args": {}}) as r:
                assert r.status == 400
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {theirs}"}) as http:
            async with http.post(f"{url}/index", json=call) as r:
                assert r.status == 409
            lookup = {"op": "cache_entry", "args": {"key": "nope"}}
            async with http.post(f"{url}/index", json=lookup) as r:
                assert (r.status, await r.json()) == (200, {"result": None})
        assert rt.queue.get(job_id).cache_hit is True


def test_a_torn_last_line_is_ended_before_the_next_batch(tmp_path: Path) -> None:
    from bot.agent_logs import AgentLogs
    from runner.logs import LogHub, LogLine

    path = tmp_path / "7.log"
    path.write_bytes(LogLine(1, 1.0, "", "stdout", "one").to_json().encode() + b"\n" + b'{"n":2,"t":1.0,"s"')
    logs = AgentLogs(LogHub(), lambda job_id: path)
    assert logs.last(7) == 1
    assert logs.append(7, [LogLine(2, 2.0, "", "stdout", "two")]) == 2
    assert [(line.n, line.text) for line in read_log(path)] == [(1, "one"), (2, "two")]


async def test_a_jobs_service_log_reaches_the_coordinator(base: Settings, tmp_path: Path,
                                                           make_local_repo: MakeRepo) -> None:
    from runner.services import service_log
    from tests.fake_engine import FAKE_IMAGE, ServiceScript

    repo, sha = make_local_repo({"README": "x\n"})
    engine = FakeEngine()
    engine.service("db", ServiceScript(lines=["database system is ready", "listening"]))
    engine.on("psql", Script(lines=["ok"]))
    body = {"steps": [{"name": "s", "run": "psql"}], "services": {"db": {"image": FAKE_IMAGE}}}
    async with coordinator(base) as server:
        rt = runtime(server)
        token = rt.queue.create_agent_token("solo")
        async with agent(agent_settings(base, tmp_path, "a1"), server, token, "a1", engine):
            job_id = await rt.control.submit(JobSpec(repo=str(repo), ref="main", sha=sha, pipeline=body))
            await wait_for(lambda: rt.queue.get(job_id).state.is_terminal)
        assert rt.queue.get(job_id).state is JobState.success, [line.text for line in read_log(
            rt.layout.log_file(job_id))]
        path = service_log(rt.layout, job_id, "db")
        assert path is not None
        lines = list(read_log(path))
        texts = [line.text for line in lines]
        assert texts[0] == f"service db: {FAKE_IMAGE}, attempt 1" and texts[1:3] == ["database system is ready",
                                                                                     "listening"], texts
        assert [line.n for line in lines] == list(range(1, len(lines) + 1))
