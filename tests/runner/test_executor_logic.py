"""The executor's rules on the fake engine: environment, continue_on_error, timeouts, cancel, caches, snapshots,
resume. Fast, and with no Podman: tests/runner/test_executor.py checks the same paths against real Podman."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from config.settings import SecretSpec, Settings
from runner.logs import read_log
from runner.models import Job, JobSpec, JobState, StepState
from runner.runtime import Runtime, open_runtime
from tests.fake_engine import FAKE_IMAGE, FakeEngine, Script

MakeRepo = Callable[..., tuple[Path, str]]


def steps(*runs: str | dict[str, Any], **top: Any) -> dict[str, Any]:
    made = [run if isinstance(run, dict) else {"name": f"s{i}", "run": run} for i, run in enumerate(runs)]
    return {"steps": made, **top}


async def run_job(rt: Runtime, repo: Path, pipeline: dict[str, Any] | None = None, **spec: Any) -> Job:
    job_id = await rt.control.submit(JobSpec(repo=str(repo), ref="main", pipeline=pipeline, **spec))
    return await wait_terminal(rt, job_id)


async def wait_terminal(rt: Runtime, job_id: int, timeout: float = 30) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = rt.queue.get(job_id)
        if job.state.is_terminal:
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} still {rt.queue.get(job_id).state}")


def log_text(rt: Runtime, job_id: int) -> str:
    return "\n".join(line.text for line in read_log(rt.layout.log_file(job_id)))


@pytest.fixture
def repo(make_local_repo: MakeRepo) -> Path:
    return make_local_repo({"package-lock.json": '{"lockfileVersion": 3}\n'})[0]


def tuned(settings: Settings, **runner: Any) -> Settings:
    return dataclasses.replace(settings, runner=dataclasses.replace(settings.runner, **runner))


@pytest.fixture
async def rt(fake_settings: Settings, fake_engine: FakeEngine) -> AsyncIterator[Runtime]:
    async with open_runtime(fake_settings, {}, engine=fake_engine) as runtime:
        yield runtime


async def test_environment_layers_submitted_pipeline_secret_and_step(
        fake_settings: Settings, fake_engine: FakeEngine, repo: Path) -> None:
    settings = dataclasses.replace(fake_settings, secrets={
        "TOKEN": SecretSpec(env="HOST_TOKEN"),
        "OTHER": SecretSpec(env="HOST_OTHER", repos=("elsewhere/*",))})
    pipeline = steps({"name": "a", "run": "a"}, {"name": "b", "run": "b", "env": {"B": "step"}},
                     env={"A": "pipeline", "B": "pipeline"}, secrets=["TOKEN", "OTHER"])
    environ = {"HOST_TOKEN": "t0ps3cret", "HOST_OTHER": "other-secret"}
    fake_engine.on("a", Script(lines=["token is $TOKEN"]))
    async with open_runtime(settings, environ, engine=fake_engine) as rt:
        job = await run_job(rt, repo, pipeline, env={"A": "submitted", "Z": "z"})
        text = log_text(rt, job.id)
    assert job.state is JobState.success, text
    first, second = fake_engine.execs
    assert (first.env["A"], first.env["B"], first.env["Z"]) == ("pipeline", "pipeline", "z")
    assert second.env["B"] == "step"
    assert first.env["TOKEN"] == "t0ps3cret" and "OTHER" not in first.env  # repo globs decide
    assert first.env["CI"] == "true" and first.env["FORGECI_JOB_ID"] == str(job.id)
    assert len(first.env["FORGECI_SHA"]) == 40
    assert "t0ps3cret" not in text and "token is ***" in text  # masked in the log
    assert "secret OTHER withheld" in text


async def test_forks_never_receive_secrets(fake_settings: Settings, fake_engine: FakeEngine, repo: Path) -> None:
    settings = dataclasses.replace(fake_settings, secrets={"TOKEN": SecretSpec(env="HOST_TOKEN")})
    async with open_runtime(settings, {"HOST_TOKEN": "t0ps3cret"}, engine=fake_engine) as rt:
        job = await run_job(rt, repo, steps("use", secrets=["TOKEN"]), fork=True, event="pull_request",
                            pr_number=7)
        text = log_text(rt, job.id)
    assert job.state is JobState.success
    assert "TOKEN" not in fake_engine.execs[0].env
    assert "fork pull requests never receive secrets" in text


async def test_continue_on_error_goes_on_and_a_plain_failure_stops(rt: Runtime, fake_engine: FakeEngine,
                                                                   repo: Path) -> None:
    fake_engine.on("lint", Script(exit_code=1))
    fake_engine.on("test", Script(exit_code=4))
    pipeline = steps({"name": "lint", "run": "lint", "continue_on_error": True}, {"name": "test", "run": "test"},
                     {"name": "never", "run": "never"})
    job = await run_job(rt, repo, pipeline)
    assert job.state is JobState.failure and job.error == "step test failed (exit 4)"
    assert [(s.name, s.state, s.exit_code) for s in job.steps] == [
        ("lint", StepState.failure, 1), ("test", StepState.failure, 4)]
    assert fake_engine.runs(job.id) == ["lint", "test"]


async def test_a_step_over_its_limit_gets_term_then_kill_and_ends_timeout(
        fake_settings: Settings, fake_engine: FakeEngine, repo: Path) -> None:
    fake_engine.on("stubborn", Script(hang=True, ignore_term=True))
    async with open_runtime(tuned(fake_settings, step_timeout=0.5), {}, engine=fake_engine) as rt:
        started = time.monotonic()
        job = await run_job(rt, repo, steps("stubborn", "after"))
        took = time.monotonic() - started
    assert job.state is JobState.timeout and job.error == "step s0 exceeded its time limit"
    assert fake_engine.execs[0].signals == ["TERM", "KILL"]  # TERM ignored, KILL after the 1 s grace
    assert 1.0 < took < 10
    assert fake_engine.runs(job.id) == ["stubborn"]


async def test_the_job_timeout_bounds_every_step(fake_settings: Settings, fake_engine: FakeEngine,
                                                 repo: Path) -> None:
    fake_engine.on("slow", Script(delay=0.6))
    async with open_runtime(fake_settings, {}, engine=fake_engine) as rt:
        job = await run_job(rt, repo, steps("slow", "slow", "slow", timeout="1s"))
    assert job.state is JobState.timeout and job.error == "step s1 exceeded the job's time limit"
    assert [s.state for s in job.steps] == [StepState.success, StepState.timeout]


async def test_cancel_during_a_step_stops_it_and_runs_nothing_after(rt: Runtime, fake_engine: FakeEngine,
                                                                    repo: Path) -> None:
    fake_engine.on("wait", Script(lines=["waiting"], hang=True))
    job_id = await rt.control.submit(JobSpec(repo=str(repo), ref="main", pipeline=steps("wait", "after")))
    while not fake_engine.execs:
        await asyncio.sleep(0.02)
    await rt.control.cancel(job_id)
    job = await wait_terminal(rt, job_id)
    assert job.state is JobState.cancelled and job.error == "cancelled during step s0"
    assert fake_engine.execs[0].signals == ["TERM"] and fake_engine.runs(job_id) == ["wait"]
    fake_engine.check()  # and its container is gone


async def test_caches_save_on_success_and_restore_by_lockfile(rt: Runtime, fake_engine: FakeEngine,
                                                              repo: Path) -> None:
    fake_engine.on("npm ci", Script(files={"node_modules/left-pad/index.js": "module.exports = 1\n"}))
    first = await run_job(rt, repo, steps("npm ci"))
    second = await run_job(rt, repo, steps("npm ci"))
    assert first.state is second.state is JobState.success
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert "cache: detected from package-lock.json" in log_text(rt, first.id)
    assert fake_engine.execs[0].env["npm_config_cache"].startswith("/workspace/")
    assert [entry.repo for entry in rt.queue.cache_entries()] != []


async def test_a_failed_job_saves_no_cache_unless_asked(rt: Runtime, fake_engine: FakeEngine, repo: Path) -> None:
    fake_engine.on("build", Script(exit_code=1, files={"deps/x": "1"}))
    failed = await run_job(rt, repo, steps("build", cache={"paths": ["deps"], "key_files": ["package-lock.json"]}))
    assert failed.state is JobState.failure and rt.queue.cache_entries() == []
    always = await run_job(rt, repo, steps("build", cache={"paths": ["deps"], "key_files": ["package-lock.json"],
                                                            "save": "always"}))
    assert always.state is JobState.failure and len(rt.queue.cache_entries()) == 1


@pytest.mark.parametrize(("policy", "fails", "kept"), [
    ("always", False, True), ("on_success", False, True), ("on_success", True, False),
    ("on_failure", True, True), ("on_failure", False, False), ("never", True, False),
])
async def test_snapshot_policy(rt: Runtime, fake_engine: FakeEngine, repo: Path, policy: str, fails: bool,
                               kept: bool) -> None:
    fake_engine.on("work", Script(exit_code=3 if fails else 0))
    job = await run_job(rt, repo, steps("work", snapshot=policy))
    assert job.state is (JobState.failure if fails else JobState.success)
    assert (rt.queue.snapshot(job.id) is not None) is kept


async def test_retry_from_the_failed_step_restores_the_earlier_steps_work(rt: Runtime, fake_engine: FakeEngine,
                                                                          repo: Path) -> None:
    fake_engine.on("build", Script(files={"out/built": "yes"}))
    fake_engine.on("flaky", Script(exit_code=1), Script(exit_code=0))
    first = await run_job(rt, repo, steps("build", "flaky", "last", snapshot="on_failure"))
    assert first.state is JobState.failure
    record = rt.queue.snapshot(first.id)
    assert record is not None and (record.failed_step, record.failed_step_name) == (1, "s1")
    retried = await wait_terminal(rt, await rt.control.retry(first.id, from_failed_step=True))
    assert retried.state is JobState.success, log_text(rt, retried.id)
    assert [s.state for s in retried.steps] == [StepState.restored, StepState.success, StepState.success]
    assert fake_engine.runs(retried.id) == ["flaky", "last"]  # build's work came from the snapshot
    assert "restored from the snapshot of job" in log_text(rt, retried.id)


async def test_a_job_submitted_without_a_sha_records_the_commit_it_ran(
        rt: Runtime, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, head = make_local_repo({"README": "tip\n"})
    events: list[tuple[str, dict[str, Any]]] = []

    async def listen() -> None:
        async for event in rt.events.subscribe():
            events.append((event.kind, event.data))

    listener = asyncio.ensure_future(listen())
    job = await run_job(rt, repo, steps("true"))
    listener.cancel()
    assert job.state is JobState.success and job.spec.sha == head
    assert ("sha", {"sha": head}) in events
    again = await wait_terminal(rt, await rt.control.retry(job.id))
    assert again.spec.sha == head  # a retry builds the same commit, not whatever the ref points at now


def retrying(settings: Settings, max_retries: int) -> Settings:
    return dataclasses.replace(settings, queue=dataclasses.replace(settings.queue, max_retries=max_retries))


async def test_a_pipeline_image_that_does_not_exist_fails_the_job_at_once(fake_settings: Settings,
                                                                          repo: Path) -> None:
    engine = FakeEngine(images=(FAKE_IMAGE, "localhost/other:1"))
    async with open_runtime(retrying(fake_settings, 2), {}, engine=engine) as rt:
        job = await run_job(rt, repo, steps("never", image="localhost/no-such-image:1"))
        text = log_text(rt, job.id)
        other = await run_job(rt, repo, steps("works", image="localhost/other:1"))
    assert job.state is JobState.failure and job.attempts == 1, text  # the pipeline's fault: no retries
    assert "image localhost/no-such-image:1 does not exist" in (job.error or "")
    assert "image localhost/no-such-image:1 does not exist" in text and "infrastructure error" not in text
    assert job.cache_hit is None and job.steps == ()  # ended in the plan: no cache restore, no container
    assert other.state is JobState.success and [c.image for c in engine.created] == ["localhost/other:1"]
    engine.check()


@pytest.mark.parametrize("named", [False, True])
async def test_a_missing_default_image_is_an_infrastructure_fault(fake_settings: Settings, repo: Path,
                                                                  named: bool) -> None:
    # runner.image is the server's: missing, it is the runner's fault, even when the pipeline names it too.
    engine = FakeEngine(images=())
    pipeline = steps("never", image=FAKE_IMAGE) if named else steps("never")
    async with open_runtime(retrying(fake_settings, 1), {}, engine=engine) as rt:
        job = await run_job(rt, repo, pipeline)
        text = log_text(rt, job.id)
    assert job.state is JobState.error and job.attempts == 2, text
    assert FAKE_IMAGE in (job.error or "") and "infrastructure error" in text
    assert engine.execs == [] and engine.containers == {}


async def test_a_resume_whose_snapshot_is_gone_fails_and_leaves_no_workspace(rt: Runtime, fake_engine: FakeEngine,
                                                                             repo: Path) -> None:
    fake_engine.on("flaky", Script(exit_code=1))
    first = await run_job(rt, repo, steps("build", "flaky", snapshot="on_failure"))
    record = rt.queue.snapshot(first.id)
    assert record is not None
    rt.store.delete(record.key)
    retried = await wait_terminal(rt, await rt.control.retry(first.id, from_failed_step=True))
    assert retried.state is JobState.failure and "is gone from the store" in (retried.error or "")
    assert not (rt.layout.workspaces / str(retried.id)).exists()  # the folder made for the restore went too
