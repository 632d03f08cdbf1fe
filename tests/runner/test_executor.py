"""Jobs run for real in rootless Podman: steps, environment, results, timeouts, cancellation, cleanup."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from config.settings import SecretSpec, Settings
from runner.logs import LogLine, read_log
from runner.models import Job, JobSpec, JobState, StepState
from runner.podman_user import PodmanUser
from runner.runtime import Runtime, open_runtime
from tests.conftest import with_runner

pytestmark = [pytest.mark.slow, pytest.mark.podman]

MakeRepo = Callable[..., tuple[Path, str]]


def pipeline(*steps: str, extra: str = "") -> str:
    body = "".join(f'[[steps]]\nname = "s{i}"\nrun = """{run}"""\n{extra if i == len(steps) - 1 else ""}\n'
                   for i, run in enumerate(steps))
    return body


async def wait_terminal(rt: Runtime, job_id: int, timeout: float = 60) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = rt.queue.get(job_id)
        if job.state.is_terminal:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} still {rt.queue.get(job_id).state} after {timeout}s")


async def wait_state(rt: Runtime, job_id: int, state: JobState, timeout: float = 30) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = rt.queue.get(job_id)
        if job.state is state:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {state}")


def submit(rt: Runtime, repo: Path, **kw: object) -> int:
    spec = JobSpec(repo=str(repo), ref=str(kw.pop("ref", "main")), **kw)  # type: ignore[arg-type]
    job_id = rt.queue.enqueue(spec)
    assert rt.pool is not None
    rt.pool.wake()
    return job_id


def log_text(rt: Runtime, job_id: int) -> str:
    return "\n".join(line.text for line in read_log(rt.layout.log_file(job_id)))


def log_lines(rt: Runtime, job_id: int, step: str) -> list[str]:
    return [line.text for line in read_log(rt.layout.log_file(job_id)) if line.step == step
            and line.stream != "system"]


async def test_steps_run_in_order_in_one_container_with_merged_env(runtime: Runtime, make_repo: MakeRepo) -> None:
    toml = ('[env]\nA = "pipeline"\nB = "pipeline"\n'
            + pipeline('echo "one A=$A B=$B" && echo $$ > /tmp/first-shell && hostname > /tmp/host',
                       'echo "two A=$A B=$B CI=$CI job=$FORGECI_JOB_ID ref=$FORGECI_REF"; cat /tmp/host',
                       extra='env = { B = "step" }\n'))
    repo, sha = make_repo({".forgeci.toml": toml})
    job_id = submit(runtime, repo, env={"A": "submitted", "Z": "z"})
    job = await wait_terminal(runtime, job_id)
    assert job.state is JobState.success, log_text(runtime, job_id)
    assert log_lines(runtime, job_id, "s0") == ["one A=pipeline B=pipeline"]
    two = log_lines(runtime, job_id, "s1")
    assert two[0] == f"two A=pipeline B=step CI=true job={job_id} ref=main"
    assert len(two) == 2  # /tmp/host written by step 1 was still there: same container
    assert [s.name for s in job.steps] == ["s0", "s1"]
    assert all(s.state is StepState.success and s.exit_code == 0 and s.duration is not None for s in job.steps)
    assert f"{sha}" in log_text(runtime, job_id)


async def test_failing_step_stops_the_job_and_continue_on_error_goes_on(runtime: Runtime, make_repo: MakeRepo) -> None:
    repo, _ = make_repo({".forgeci.toml": pipeline("exit 3", "echo never")})
    failed = submit(runtime, repo)
    toml = ('[[steps]]\nname = "flaky"\nrun = "exit 4"\ncontinue_on_error = true\n'
            '[[steps]]\nname = "after"\nrun = "echo went on"\n')
    repo2, _ = make_repo({".forgeci.toml": toml})
    went_on = submit(runtime, repo2)
    job = await wait_terminal(runtime, failed)
    assert job.state is JobState.failure
    assert [(s.name, s.state, s.exit_code) for s in job.steps] == [("s0", StepState.failure, 3)]
    assert "s0" in (job.error or "")
    job2 = await wait_terminal(runtime, went_on)
    assert job2.state is JobState.success
    assert [(s.name, s.state) for s in job2.steps] == [("flaky", StepState.failure), ("after", StepState.success)]
    assert log_lines(runtime, went_on, "after") == ["went on"]


async def test_pipeline_errors_end_in_failure_with_messages(runtime: Runtime, make_repo: MakeRepo) -> None:
    repo, _ = make_repo({".forgeci.toml": 'timeout = "soon"\n[[steps]]\nrnu = "x"\n'})
    job = await wait_terminal(runtime, submit(runtime, repo))
    assert job.state is JobState.failure
    text = log_text(runtime, job.id)
    assert "timeout" in text and "steps[0].rnu" in text and "soon" in text
    assert "invalid pipeline" in (job.error or "")
    missing, _ = make_repo({"README": "no pipeline"})
    job = await wait_terminal(runtime, submit(runtime, missing))
    assert job.state is JobState.failure and ".forgeci.toml" in (job.error or "")


async def test_branches_filter_skips_without_a_container(runtime: Runtime, make_repo: MakeRepo) -> None:
    repo, _ = make_repo({".forgeci.toml": 'branches = ["release/*"]\n' + pipeline("echo ran")})
    job = await wait_terminal(runtime, submit(runtime, repo))
    assert job.state is JobState.skipped
    assert "container" not in log_text(runtime, job.id)
    assert job.steps == ()


async def test_step_timeout_kills_the_step_promptly_and_leaves_nothing(runtime: Runtime, make_repo: MakeRepo) -> None:
    repo, _ = make_repo({".forgeci.toml": pipeline("sleep 600 & sleep 600", extra='timeout = "2s"\n')})
    job_id = submit(runtime, repo)
    running = await wait_state(runtime, job_id, JobState.running)
    job = await wait_terminal(runtime, job_id)
    assert job.state is JobState.timeout
    assert job.steps[0].state is StepState.timeout
    assert job.finished_at is not None and running.started_at is not None
    assert job.steps[0].duration is not None and 2.0 <= job.steps[0].duration < 5.0
    await asyncio.sleep(0.2)
    assert await runtime.engine.job_containers() == {}
    assert not (runtime.layout.workspaces / str(job_id)).exists()


async def test_job_timeout_applies_across_steps(runtime: Runtime, make_repo: MakeRepo) -> None:
    repo, _ = make_repo({".forgeci.toml": 'timeout = "2s"\n' + pipeline("sleep 1", "sleep 600")})
    started = time.monotonic()
    job = await wait_terminal(runtime, submit(runtime, repo))
    assert job.state is JobState.timeout and "job" in (job.error or "")
    assert time.monotonic() - started < 15


async def test_cancel_during_a_step(runtime: Runtime, make_repo: MakeRepo) -> None:
    repo, _ = make_repo({".forgeci.toml": pipeline("echo started; sleep 600", "echo never")})
    job_id = submit(runtime, repo)
    await wait_state(runtime, job_id, JobState.running)
    deadline = time.monotonic() + 20
    while "started" not in log_lines(runtime, job_id, "s0") and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    t0 = time.monotonic()
    assert runtime.queue.cancel(job_id) is JobState.running  # flagged; the runner stops it
    job = await wait_terminal(runtime, job_id)
    assert job.state is JobState.cancelled
    assert time.monotonic() - t0 < 5
    assert [s.state for s in job.steps] == [StepState.cancelled]


async def test_live_lines_reach_a_follower_while_the_step_runs(runtime: Runtime, make_repo: MakeRepo) -> None:
    repo, _ = make_repo({".forgeci.toml": pipeline("for i in $(seq 1 20); do echo tick $i; sleep 0.1; done")})
    job_id = submit(runtime, repo)
    received: list[tuple[float, LogLine]] = []

    async def follow() -> None:
        async for line in runtime.hub.follow(job_id, runtime.layout.log_file(job_id), 0,
                                             done=lambda: runtime.queue.get(job_id).state.is_terminal):
            received.append((time.monotonic(), line))

    follower = asyncio.create_task(follow())
    job = await wait_terminal(runtime, job_id)
    await asyncio.wait_for(follower, 10)
    ticks = [(t, line) for t, line in received if line.text.startswith("tick")]
    assert [line.text for _, line in ticks] == [f"tick {i}" for i in range(1, 21)]
    assert job.finished_at is not None
    # The first tick arrived well before the step ended (20 x 0.1 s), not in one lump at the end.
    assert ticks[-1][0] - ticks[0][0] > 1.0
    assert all(line.stream == "stdout" and line.step == "s0" and line.t > 0 for _, line in ticks)


async def test_rootless_uid_zero_inside_is_not_root_outside(
    runtime: Runtime, make_repo: MakeRepo, podman_user: PodmanUser
) -> None:
    repo, _ = make_repo({".forgeci.toml": pipeline("id -u; head -n1 /proc/self/uid_map")})
    job = await wait_terminal(runtime, submit(runtime, repo))
    assert job.state is JobState.success
    uid_inside, uid_map = log_lines(runtime, job.id, "s0")
    assert uid_inside == "0"
    inside, outside, _count = (int(x) for x in uid_map.split())
    # uid 0 in the container is the unprivileged Podman user on the host, also when the tests run as root.
    assert (inside, outside) == (0, podman_user.uid) and outside != 0
    info = await runtime.engine.info()
    assert info["host"]["security"]["rootless"] is True


async def test_secrets_are_masked_and_never_given_to_forks(
    settings: Settings, make_repo: MakeRepo
) -> None:
    secret = "s3cr3t-Value-42"
    settings = dataclasses.replace(settings, secrets={"TOKEN": SecretSpec(env="T_ENV", repos=("*",))})
    toml = ('secrets = ["TOKEN"]\n' + pipeline(
        'echo "whole $TOKEN"; printf "split %s" "${TOKEN%%Value*}"; sleep 0.3; echo "Value${TOKEN#*Value}";'
        ' echo "b64 $(printf %s "$TOKEN" | base64)"; echo "len ${#TOKEN}"'))
    repo, _ = make_repo({".forgeci.toml": toml})
    async with open_runtime(settings, {"T_ENV": secret}) as rt:
        own = submit(rt, repo)
        fork = submit(rt, repo, fork=True, pr_number=7, base_ref="main")
        job = await wait_terminal(rt, own)
        fork_job = await wait_terminal(rt, fork)
        text = log_text(rt, own)
        fork_text = log_text(rt, fork)
    assert job.state is JobState.success and fork_job.state is JobState.success
    assert secret not in text and base64.b64encode(secret.encode()).decode() not in text
    assert "whole ***" in text and "split ***" in text and "b64 ***" in text
    assert f"len {len(secret)}" in text  # the job did receive it
    assert "len 0" in fork_text and "withheld" in fork_text


async def test_graceful_stop_returns_running_jobs_to_the_queue(settings: Settings, make_repo: MakeRepo) -> None:
    repo, _ = make_repo({".forgeci.toml": pipeline("sleep 600")})
    async with open_runtime(settings, {}) as rt:
        job_id = submit(rt, repo)
        await wait_state(rt, job_id, JobState.running)
        await asyncio.sleep(0.5)
        assert rt.pool is not None
        t0 = time.monotonic()
        await rt.pool.stop(grace=0.5)
        assert time.monotonic() - t0 < 20
        job = rt.queue.get(job_id)
        assert job.state is JobState.queued and job.attempts == 1
        assert await rt.engine.job_containers() == {}


async def test_startup_reaps_leftovers_and_requeues_orphans(settings: Settings, make_repo: MakeRepo) -> None:
    repo, _ = make_repo({".forgeci.toml": pipeline("echo ok")})
    async with open_runtime(settings, {}, workers=False) as rt:
        # A crash: a job marked running by this runner, its container and workspace still there.
        orphan = rt.queue.enqueue(JobSpec(repo=str(repo), ref="main"))
        from runner.worker import default_runner_id
        claimed = rt.queue.claim(default_runner_id(), 60)
        assert claimed is not None and claimed.id == orphan
        ws = rt.layout.workspaces / "999"
        ws.mkdir()
        from runner.podman import ContainerSpec
        await rt.engine.start_job_container(ContainerSpec(999, settings.runner.image, ws, network="none"))
        assert 999 in (await rt.engine.job_containers()).values()
    async with open_runtime(settings, {}) as rt:
        job = await wait_terminal(rt, orphan)
        assert job.state is JobState.success and job.attempts == 2
        assert 999 not in (await rt.engine.job_containers()).values()
        assert not ws.exists()


async def test_podman_service_is_restarted_after_it_dies(settings: Settings, make_repo: MakeRepo) -> None:
    # A private service: killing the shared one would disturb every other run on this machine.
    async with open_runtime(with_runner(settings, podman_service="private"), {}) as runtime:
        await _service_restarted(runtime, make_repo)


async def _service_restarted(runtime: Runtime, make_repo: MakeRepo) -> None:
    assert runtime.engine.service is not None
    old = runtime.engine.service.pid_file.read_text()
    os.killpg(int(old), 9)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (not runtime.engine.service.alive() or runtime.engine.service.pid_file.read_text() == old):
        await asyncio.sleep(0.1)
    assert runtime.engine.service.alive() and runtime.engine.service.pid_file.read_text() != old
    repo, _ = make_repo({".forgeci.toml": pipeline("echo after restart")})
    job = await wait_terminal(runtime, submit(runtime, repo))
    assert job.state is JobState.success


async def test_a_missing_pipeline_image_fails_the_job_and_a_missing_default_image_is_an_infrastructure_fault(
    settings: Settings, make_repo: MakeRepo
) -> None:
    named, _ = make_repo({".forgeci.toml": 'image = "localhost/no-such-image:1"\n' + pipeline("true")})
    default, _ = make_repo({".forgeci.toml": pipeline("true")})
    settings = dataclasses.replace(settings, queue=dataclasses.replace(settings.queue, max_retries=1))
    async with open_runtime(settings, {}) as rt:
        job = await wait_terminal(rt, submit(rt, named))
        text = log_text(rt, job.id)
    # The pipeline names an image Podman does not have: the pipeline's fault, at once.
    assert job.state is JobState.failure and job.attempts == 1, text
    assert "localhost/no-such-image:1" in (job.error or "") and "image localhost/no-such-image:1 does not" in text
    async with open_runtime(with_runner(settings, image="localhost/no-such-default-image:1"), {}) as rt:
        job = await wait_terminal(rt, submit(rt, default))
    # The server's own image is missing: the runner's fault, retried, then `error` naming the image.
    assert job.state is JobState.error and job.attempts == 2
    assert "localhost/no-such-default-image:1" in (job.error or "")


async def test_nothing_is_left_after_jobs(settings: Settings, make_repo: MakeRepo, podman_user: PodmanUser) -> None:
    repo, _ = make_repo({".forgeci.toml": pipeline("echo hi > /workspace/out")})
    async with open_runtime(with_runner(settings, podman_service="private"), {}) as rt:  # it stops with us
        job = await wait_terminal(rt, submit(rt, repo))
        assert job.state is JobState.success
        service = rt.engine.service
        assert service is not None
        pid = int(service.pid_file.read_text())
    assert list((settings.data_dir / "workspaces").iterdir()) == []
    assert not Path(f"/proc/{pid}").exists()
    result = podman_user.run(["podman", "ps", "-aq", "--filter", f"label=forgeci.instance={settings.data_dir}"])
    assert result.stdout.decode().strip() == ""


async def test_reaping_never_touches_another_instances_containers(
    settings: Settings, shared_dir: Path
) -> None:
    from runner.podman import ContainerSpec

    other = dataclasses.replace(settings, data_dir=shared_dir / "other")
    async with open_runtime(settings, {}, workers=False) as mine:
        ws = mine.layout.workspaces / "5"
        ws.mkdir()
        container = await mine.engine.start_job_container(ContainerSpec(5, settings.runner.image, ws, network="none"))
        try:
            async with open_runtime(other, {}) as theirs:  # its start-up reap runs here
                assert await theirs.engine.job_containers() == {}
            assert container in await mine.engine.job_containers()
        finally:
            await mine.engine.remove(container)
