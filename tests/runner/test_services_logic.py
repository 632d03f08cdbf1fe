"""Service containers on the fake engine: the pod, readiness (ready, ports, settle), failures with their log lines,
a death mid-job, cleanup on every path, the start-up reap, matrix values. tests/runner/test_services.py does the
same against real Podman."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from runner.engine import PodSpec, ServiceContainerSpec
from runner.logs import read_log
from runner.models import JobSpec, JobState, StepState
from runner.runtime import Runtime, open_runtime
from runner.services import SETTLE, service_log, service_log_names
from tests.fake_engine import FakeEngine, Script, ServiceScript
from tests.runner.test_executor_logic import log_text, run_job, wait_terminal

MakeRepo = Callable[..., tuple[Path, str]]
DB_IMAGE = "localhost/fake-postgres:15"
REDIS_IMAGE = "localhost/fake-redis:7"


def pipeline(*runs: str, services: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"steps": [{"name": f"s{i}", "run": run} for i, run in enumerate(runs)], "services": services, **top}


@pytest.fixture
def engine(fake_engine: FakeEngine) -> FakeEngine:
    fake_engine.images |= {DB_IMAGE, REDIS_IMAGE}
    return fake_engine


@pytest.fixture
async def rt(fake_settings: Settings, engine: FakeEngine) -> AsyncIterator[Runtime]:
    async with open_runtime(fake_settings, {}, engine=engine) as runtime:
        yield runtime


@pytest.fixture
def repo(make_local_repo: MakeRepo) -> Path:
    return make_local_repo({"README": "services\n"})[0]


def only_service(engine: FakeEngine, name: str) -> ServiceContainerSpec:
    specs = [s.spec for s in engine.services.values() if s.spec.name == name]
    assert len(specs) == 1, specs
    return specs[0]


async def test_a_service_shares_a_pod_and_hosts_file_with_the_job_and_everything_goes_afterwards(
        rt: Runtime, engine: FakeEngine, repo: Path, fake_settings: Settings) -> None:
    hosts: list[str] = []
    engine.service("db", ServiceScript(lines=["database system is ready"]))
    engine.on("psql", Script(lines=["ok"]))
    original = engine.start_job_container

    async def spy(spec: Any) -> str:  # the hosts file exists while the pod runs, and is gone afterwards
        hosts.append(spec.hosts_file.read_text())
        return await original(spec)

    engine.start_job_container = spy  # type: ignore[method-assign]
    body = pipeline("psql", services={"db": {"image": DB_IMAGE, "env": {"POSTGRES_PASSWORD": "ci"},
                                              "command": ["postgres", "-c", "fsync=off"]}})
    job = await run_job(rt, repo, body)
    text = log_text(rt, job.id)
    assert job.state is JobState.success, text
    db = only_service(engine, "db")
    step = engine.created[-1]
    assert step.pod == db.pod and step.hosts_file == db.hosts_file and db.job_id == job.id
    assert db.env == {"POSTGRES_PASSWORD": "ci"} and tuple(db.command or ()) == ("postgres", "-c", "fsync=off")
    assert db.memory == fake_settings.runner.memory and tuple(db.ulimits) == tuple(fake_settings.runner.ulimits)
    assert "127.0.0.1\tdb" in hosts[0] and "127.0.0.1\tlocalhost" in hosts[0]
    assert "service db started" in text and "service db ready in" in text
    engine.check()  # no container and no pod left
    assert not db.hosts_file.exists()
    assert service_log_names(rt.layout, job.id) == ["db"]
    path = service_log(rt.layout, job.id, "db")
    assert path is not None and service_log(rt.layout, job.id, "cache") is None
    assert service_log(rt.layout, job.id, "../../1") is None and service_log(rt.layout, job.id, "db/x") is None
    kept = [line.text for line in read_log(path)]
    assert kept[0].startswith(f"service db: {DB_IMAGE}") and "database system is ready" in kept


async def test_the_first_step_waits_for_ready_to_succeed(rt: Runtime, engine: FakeEngine, repo: Path) -> None:
    engine.service("db", ServiceScript(ready_after=0.6))
    job = await run_job(rt, repo, pipeline("first", services={"db": {"image": DB_IMAGE, "ready": "pg_isready"}}))
    assert job.state is JobState.success, log_text(rt, job.id)
    service = next(iter(engine.services.values()))
    assert engine.execs[0].started >= service.started + 0.6
    assert service.probes >= 2  # polled: the first checks found it not ready
    assert "`pg_isready` exited 0" in log_text(rt, job.id)


async def test_without_ready_the_exposed_ports_are_waited_for(rt: Runtime, engine: FakeEngine, repo: Path) -> None:
    engine.ports[REDIS_IMAGE] = (6379,)
    engine.service("redis", ServiceScript(ready_after=0.5))
    job = await run_job(rt, repo, pipeline("first", services={"redis": {"image": REDIS_IMAGE}}))
    assert job.state is JobState.success
    service = next(iter(engine.services.values()))
    assert engine.execs[0].started >= service.started + 0.5
    assert service.probes == 0 and "port 6379 listening" in log_text(rt, job.id)


async def test_without_ready_or_ports_a_short_settle_is_enough(rt: Runtime, engine: FakeEngine, repo: Path) -> None:
    job = await run_job(rt, repo, pipeline("first", services={"idle": {"image": REDIS_IMAGE}}))
    service = next(iter(engine.services.values()))
    assert job.state is JobState.success
    assert service.started + SETTLE <= engine.execs[0].started < service.started + SETTLE + 1.0
    assert "no `ready` and no exposed ports" in log_text(rt, job.id)


async def test_a_service_that_never_gets_ready_fails_the_job_in_time_with_its_last_lines(
        rt: Runtime, engine: FakeEngine, repo: Path) -> None:
    engine.service("db", ServiceScript(never_ready=True, lines=[f"line {i}" for i in range(80)]))
    started = time.monotonic()
    job = await run_job(rt, repo, pipeline("never", services={"db": {"image": DB_IMAGE, "ready": "pg_isready",
                                                                       "ready_timeout": "1s"}}))
    took = time.monotonic() - started
    text = log_text(rt, job.id)
    assert job.state is JobState.failure and job.attempts == 1, text  # the pipeline's fault: no retry
    assert job.error == "service db was not ready within 1s (waiting for `pg_isready`; last check: exit 1)"
    assert 1.0 <= took < 4.0
    assert "last 50 log lines of service db:" in text
    assert "db | line 30" in text and "db | line 79" in text and "db | line 29" not in text
    assert engine.runs() == [] and job.steps == ()
    engine.check()


async def test_a_service_that_exits_before_it_is_ready_fails_the_job_with_its_last_words(
        rt: Runtime, engine: FakeEngine, repo: Path) -> None:
    engine.service("db", ServiceScript(exits_after=0.2, exit_code=3, never_ready=True,
                                       last_words=["FATAL: bad configuration"]))
    job = await run_job(rt, repo, pipeline("never", services={"db": {"image": DB_IMAGE, "ready": "pg_isready"}}))
    text = log_text(rt, job.id)
    assert job.state is JobState.failure and job.error == "service db exited with code 3 before it was ready"
    assert "db | FATAL: bad configuration" in text
    engine.check()


async def test_a_service_that_dies_mid_job_is_reported_and_the_steps_decide(
        rt: Runtime, engine: FakeEngine, repo: Path) -> None:
    engine.service("db", ServiceScript(exits_after=0.5, exit_code=137, last_words=["killed"]))
    engine.on("long", Script(delay=1.5))
    job = await run_job(rt, repo, pipeline("long", services={"db": {"image": DB_IMAGE}}))
    text = log_text(rt, job.id)
    assert job.state is JobState.success, text
    assert "service db stopped during the job (exit code 137)" in text and "db | killed" in text
    report = next(line for line in read_log(rt.layout.log_file(job.id)) if "stopped during" in line.text)
    step_end = next(line for line in read_log(rt.layout.log_file(job.id)) if line.text.startswith("step s0 ok"))
    assert report.n < step_end.n  # reported when it happened, not at the end
    engine.check()


async def test_a_refused_service_and_a_missing_service_image_fail_at_once(
        rt: Runtime, engine: FakeEngine, repo: Path) -> None:
    engine.service("bad", ServiceScript(refuse='executable file "nope" not found'))
    job = await run_job(rt, repo, pipeline("x", services={"bad": {"image": DB_IMAGE, "command": ["nope"]}}))
    assert job.state is JobState.failure and job.attempts == 1
    assert job.error == 'service bad could not start: executable file "nope" not found'
    job = await run_job(rt, repo, pipeline("x", services={"db": {"image": "localhost/none:1"}}))
    assert job.state is JobState.failure and job.attempts == 1
    assert "image localhost/none:1 of service db does not exist" in (job.error or "")
    assert engine.runs() == []
    engine.check()


async def test_an_engine_fault_starting_a_service_is_an_infrastructure_fault(
        fake_settings: Settings, engine: FakeEngine, repo: Path) -> None:
    failing = True
    original = engine.start_service

    async def flaky(spec: ServiceContainerSpec) -> str:
        nonlocal failing
        if failing:
            failing = False
            from runner.engine import EngineError
            raise EngineError("the fake engine hiccupped")
        return await original(spec)

    engine.start_service = flaky  # type: ignore[method-assign]
    async with open_runtime(fake_settings, {}, engine=engine) as rt:
        job = await run_job(rt, repo, pipeline("x", services={"db": {"image": DB_IMAGE}}))
    assert job.state is JobState.success and job.attempts == 2  # retried, as the engine's fault
    engine.check()


@pytest.mark.parametrize("ending", ["cancel", "step timeout", "job timeout", "failure"])
async def test_the_pod_goes_on_every_path(rt: Runtime, engine: FakeEngine, repo: Path, ending: str) -> None:
    engine.on("work", Script(hang=True) if ending != "failure" else Script(exit_code=2))
    top: dict[str, Any] = {"timeout": "1s"} if ending == "job timeout" else {}
    body = pipeline("work", services={"db": {"image": DB_IMAGE}, "cache": {"image": REDIS_IMAGE}}, **top)
    if ending == "step timeout":
        body["steps"][0]["timeout"] = "1s"
    job_id = await rt.control.submit(JobSpec(repo=str(repo), ref="main", pipeline=body))
    if ending == "cancel":
        while not engine.execs:
            await asyncio.sleep(0.02)
        await rt.control.cancel(job_id)
    job = await wait_terminal(rt, job_id)
    expected = {"cancel": JobState.cancelled, "step timeout": JobState.timeout, "job timeout": JobState.timeout,
                "failure": JobState.failure}[ending]
    assert job.state is expected, log_text(rt, job_id)
    assert all(not s.running for s in engine.services.values()) and len(engine.services) == 2
    engine.check()


async def test_cancel_and_the_jobs_deadline_stop_the_wait_for_readiness(
        rt: Runtime, engine: FakeEngine, repo: Path) -> None:
    engine.service("db", ServiceScript(never_ready=True))
    slow = {"db": {"image": DB_IMAGE, "ready": "pg_isready", "ready_timeout": "1m"}}
    job_id = await rt.control.submit(JobSpec(repo=str(repo), ref="main", pipeline=pipeline("x", services=slow)))
    while not engine.services:
        await asyncio.sleep(0.02)
    await rt.control.cancel(job_id)
    job = await wait_terminal(rt, job_id, timeout=5)
    assert job.state is JobState.cancelled
    job = await run_job(rt, repo, pipeline("x", services=slow, timeout="1s"))
    assert job.state is JobState.timeout and "waiting for service db" in (job.error or "")
    engine.check()


async def test_start_up_reaps_leftover_pods_and_hosts_files(
        fake_settings: Settings, engine: FakeEngine) -> None:
    async with open_runtime(fake_settings, {}, engine=engine, workers=False) as rt:
        pod = await engine.start_pod(PodSpec(41, "none", "forgeci-job-41"))
        hosts = rt.layout.pods / "41.hosts"
        hosts.write_text("127.0.0.1\tdb\n")
        await engine.start_service(ServiceContainerSpec(41, "db", DB_IMAGE, pod, hosts))
    async with open_runtime(fake_settings, {}, engine=engine):  # its start-up reap runs here
        pass
    assert engine.pods == {} and engine.containers == {} and not hosts.exists()


async def test_a_matrix_value_reaches_the_service_image_and_env(
        fake_settings: Settings, engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    engine.images |= {"localhost/fake-postgres:16"}
    repo, _ = make_local_repo({".forgeci.toml": '''
[services.db]
image = "localhost/fake-postgres:${{ matrix.pg }}"
env = { PG = "${{ matrix.pg }}" }

[jobs.test]
matrix = { pg = ["15", "16"] }
steps = [{ name = "t", run = "t" }]

[jobs.plain]
steps = [{ name = "p", run = "p" }]
[jobs.plain.services.db]
image = "localhost/fake-redis:7"
'''})
    settings = dataclasses.replace(fake_settings, queue=dataclasses.replace(fake_settings.queue, max_concurrent=3))
    async with open_runtime(settings, {}, engine=engine) as rt:
        submitted = await rt.control.submit_pipeline(JobSpec(repo=str(repo), ref="main"))
        jobs = [await wait_terminal(rt, job_id) for job_id in submitted.job_ids]
    assert all(job.state is JobState.success for job in jobs)
    started = sorted((s.spec.image, dict(s.spec.env)) for s in engine.services.values())
    assert started == [("localhost/fake-postgres:15", {"PG": "15"}), ("localhost/fake-postgres:16", {"PG": "16"}),
                       ("localhost/fake-redis:7", {})]
    engine.check()


async def test_two_jobs_get_pods_and_hosts_files_of_their_own(
        fake_settings: Settings, engine: FakeEngine, repo: Path) -> None:
    engine.on("work", Script(delay=0.5))
    body = pipeline("work", services={"db": {"image": DB_IMAGE}})
    async with open_runtime(fake_settings, {}, engine=engine) as rt:
        ids = [await rt.control.submit(JobSpec(repo=str(repo), ref="main", pipeline=body)) for _ in range(2)]
        jobs = [await wait_terminal(rt, job_id) for job_id in ids]
    assert all(job.state is JobState.success for job in jobs)
    specs = [s.spec for s in engine.services.values()]
    assert len({s.pod for s in specs}) == 2 and len({s.hosts_file for s in specs}) == 2
    first, second = engine.execs
    assert first.started < (second.ended or 0) and second.started < (first.ended or 0)  # at the same time
    assert [s.state for job in jobs for s in job.steps] == [StepState.success, StepState.success]
    engine.check()




def test_the_port_probe_finds_listening_sockets_with_sh_builtins_only() -> None:
    import socket
    import subprocess

    from runner.services import PORT_PROBE, PROBE_NAME

    def probe(*ports: int) -> int:
        argv = ["/bin/sh", "-c", PORT_PROBE, PROBE_NAME, *(f"{p:04X}" for p in ports)]
        return subprocess.run(argv, env={"PATH": ""}, check=False).returncode  # no PATH: builtins only

    with socket.socket() as v4, socket.socket(socket.AF_INET6) as v6:
        v4.bind(("127.0.0.1", 0))
        v6.bind(("::1", 0))
        v4.listen()
        v6.listen()
        ports = (v4.getsockname()[1], v6.getsockname()[1])
        assert probe(*ports) == 0  # IPv4 and IPv6 listeners both count
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))  # bound, not listening
            assert probe(ports[0], unused.getsockname()[1]) == 1


def test_the_hosts_file_names_localhost_the_pod_and_every_service() -> None:
    from runner.services import hosts_file_text

    assert hosts_file_text("forgeci-job-3", ["db", "redis"]).splitlines() == [
        "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", "127.0.0.1\tforgeci-job-3",
        "127.0.0.1\tdb", "127.0.0.1\tredis"]


async def test_a_service_that_stops_while_another_gets_ready_fails_the_job(
        rt: Runtime, engine: FakeEngine, repo: Path) -> None:
    engine.service("quick", ServiceScript(exits_after=0.3, exit_code=2))
    engine.service("slow", ServiceScript(ready_after=0.8))
    body = pipeline("x", services={"quick": {"image": DB_IMAGE}, "slow": {"image": DB_IMAGE, "ready": "check"}})
    job = await run_job(rt, repo, body)
    assert job.state is JobState.failure and job.error == "service quick exited with code 2 before it was ready"
    assert engine.runs() == []
    engine.check()
