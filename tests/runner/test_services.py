"""Service containers in real rootless Podman: PostgreSQL and Redis round trips by name, the pod and its hosts file,
two jobs on one port at once, readiness failures in time, a crash mid-job, nothing left on any path."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from config.settings import Settings
from runner.engine import PodSpec, ServiceContainerSpec
from runner.local import run_local
from runner.logs import read_log
from runner.models import JobState
from runner.podman_user import PodmanUser
from runner.runtime import open_runtime
from tests.conftest import with_runner
from tests.runner.test_executor import log_lines, log_text, submit, wait_state, wait_terminal

pytestmark = [pytest.mark.slow, pytest.mark.podman]

MakeRepo = Callable[..., tuple[Path, str]]
# A busybox service answering every connection on 8080 with $WHO; ready once something listens on 8080.
ECHO_SERVICE = '''
[services.echo]
image = "{image}"
env = {{ WHO = "{who}" }}
command = ["sh", "-c", "echo listening; nc -ll -p 8080 -e sh -c 'echo $WHO'"]
ready = "netstat -ltn | grep -q :8080"
'''


def podman_listing(user: PodmanUser, data_dir: Path) -> tuple[list[str], list[str]]:
    """(pods, containers) of the instance whose data dir is `data_dir`, as `podman pod ps` / `podman ps -a` say."""
    label = f"label=forgeci.instance={data_dir}"
    pods = user.run(["podman", "pod", "ps", "-q", "--filter", label]).stdout.decode().split()
    containers = user.run(["podman", "ps", "-aq", "--filter", label]).stdout.decode().split()
    return pods, containers


async def test_postgres_by_name_creates_a_table_and_reads_it_back(
        settings: Settings, make_repo: MakeRepo, postgres_image: str) -> None:
    toml = f'''
image = "{postgres_image}"
[services.db]
image = "{postgres_image}"
env = {{ POSTGRES_PASSWORD = "ci", POSTGRES_DB = "app" }}
command = ["postgres", "-c", "fsync=off"]
ready = "pg_isready -h 127.0.0.1 -U postgres"

[[steps]]
name = "sql"
run = """
getent hosts db
export PGPASSWORD=ci
psql -h db -p 5432 -U postgres -d app -v ON_ERROR_STOP=1 -qAt \\
  -c "create table t (id int primary key, word text)" \\
  -c "insert into t values (1, 'forty'), (2, 'two')" \\
  -c "select string_agg(word, '-' order by id) from t"
"""
'''
    repo, _ = make_repo({".forgeci.toml": toml})
    async with open_runtime(settings, {}) as rt:
        job = await wait_terminal(rt, submit(rt, repo), timeout=120)
        text = log_text(rt, job.id)
        kept = [line.text for line in read_log(rt.layout.service_log_file(job.id, "db"))]
        left = podman_listing(rt.user, settings.data_dir)
    assert job.state is JobState.success, text
    assert log_lines(rt, job.id, "sql") == ["127.0.0.1       db", "forty-two"]
    assert "service db ready in" in text and "`pg_isready -h 127.0.0.1 -U postgres` exited 0" in text
    assert any("database system is ready to accept connections" in line for line in kept)
    assert left == ([], [])


async def test_redis_by_name_answers_ping_set_get_once_its_port_listens(
        settings: Settings, make_repo: MakeRepo, redis_image: str) -> None:
    toml = f'''
image = "{redis_image}"
[services.redis]
image = "{redis_image}"

[[steps]]
name = "redis"
run = "redis-cli -h redis -p 6379 PING && redis-cli -h redis SET greeting hello && redis-cli -h redis GET greeting"
'''
    repo, _ = make_repo({".forgeci.toml": toml})
    async with open_runtime(settings, {}) as rt:
        job = await wait_terminal(rt, submit(rt, repo), timeout=60)
        text = log_text(rt, job.id)
    assert job.state is JobState.success, text
    assert log_lines(rt, job.id, "redis") == ["PONG", "OK", "hello"]
    assert "port 6379 listening" in text  # no `ready`: its EXPOSEd port, checked inside the pod


async def test_the_pod_carries_the_labels_services_are_hardened_and_the_hosts_file_names_them(
        settings: Settings, make_repo: MakeRepo, busybox_image: str, podman_user: PodmanUser) -> None:
    toml = ECHO_SERVICE.format(image=busybox_image, who="me") + '''
[services.idle]
image = "{image}"
command = ["sleep", "600"]

[[steps]]
name = "look"
run = "cat /etc/hosts; hostname; nc echo 8080 </dev/null; ls /sys/class/net; touch /workspace/looked; sleep 600"
'''.replace("{image}", busybox_image)
    repo, _ = make_repo({".forgeci.toml": toml})
    async with open_runtime(settings, {}) as rt:
        job_id = submit(rt, repo)
        await wait_state(rt, job_id, JobState.running)
        workspace = rt.layout.workspaces / str(job_id)
        deadline = time.monotonic() + 30
        while not (workspace / "looked").exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        pods = json.loads(podman_user.run(["podman", "pod", "ps", "--format", "json", "--filter",
                                           f"label=forgeci.instance={settings.data_dir}"]).stdout)
        members = {c["Id"]: c for c in pods[0]["Containers"]} if pods else {}
        inspected = json.loads(podman_user.run(["podman", "inspect", *members]).stdout) if members else []
        await rt.control.cancel(job_id)
        job = await wait_terminal(rt, job_id)
        lines = log_lines(rt, job_id, "look")
    assert job.state is JobState.cancelled
    assert len(pods) == 1 and pods[0]["Labels"]["forgeci.job"] == str(job_id)
    assert "127.0.0.1\techo" in lines and "127.0.0.1\tidle" in lines and "127.0.0.1\tlocalhost" in lines
    assert lines[lines.index("127.0.0.1\tidle") + 1] == f"forgeci-job-{job_id}"  # the hostname
    assert "me" in lines and lines[-1] == "lo"  # by name; network "none" holds for the pod: only loopback
    ours = [c for c in inspected if not c.get("IsInfra")]
    assert len(ours) == 3  # the job's container and two services
    for container in ours:
        assert container["Config"]["Labels"]["forgeci.instance"] == str(settings.data_dir)
        assert container["HostConfig"]["Init"] is True
        assert "no-new-privileges" in container["HostConfig"]["SecurityOpt"]
        assert any(m["Destination"] == "/etc/hosts" and not m["RW"] for m in container["Mounts"])
    assert sorted(c["Config"]["Labels"].get("forgeci.service", "") for c in ours) == ["", "echo", "idle"]


async def test_the_network_setting_applies_to_the_pod(
        settings: Settings, make_repo: MakeRepo, busybox_image: str) -> None:
    toml = f'[services.idle]\nimage = "{busybox_image}"\ncommand = ["sleep", "600"]\n' \
           '[[steps]]\nname = "net"\nrun = "ls /sys/class/net"\n'
    repo, _ = make_repo({".forgeci.toml": toml})
    async with open_runtime(with_runner(settings, network="slirp4netns"), {}) as rt:
        job = await wait_terminal(rt, submit(rt, repo))
        assert job.state is JobState.success, log_text(rt, job.id)
        assert "tap0" in log_lines(rt, job.id, "net")


async def test_two_jobs_each_with_a_service_on_port_8080_run_at_once_without_seeing_each_other(
        settings: Settings, make_repo: MakeRepo, busybox_image: str) -> None:
    step = '[[steps]]\nname = "ask"\nrun = "sleep 2; nc echo 8080 </dev/null; nc 127.0.0.1 8080 </dev/null"\n'
    one, _ = make_repo({".forgeci.toml": ECHO_SERVICE.format(image=busybox_image, who="one") + step})
    two, _ = make_repo({".forgeci.toml": ECHO_SERVICE.format(image=busybox_image, who="two") + step})
    async with open_runtime(settings, {}) as rt:
        first, second = submit(rt, one), submit(rt, two)
        jobs = [await wait_terminal(rt, first), await wait_terminal(rt, second)]
        answers = [log_lines(rt, job.id, "ask") for job in jobs]
    assert [job.state for job in jobs] == [JobState.success, JobState.success]
    assert answers == [["one", "one"], ["two", "two"]]
    a, b = (job.steps[0] for job in jobs)
    assert a.started_at and b.started_at and a.finished_at and b.finished_at
    assert a.started_at < b.finished_at and b.started_at < a.finished_at  # at the same time


async def test_a_service_never_ready_fails_the_job_in_time_with_its_log_lines(
        settings: Settings, make_repo: MakeRepo, busybox_image: str) -> None:
    toml = f'''
[services.db]
image = "{busybox_image}"
command = ["sh", "-c", "for i in 1 2 3; do echo booting $i; done; sleep 600"]
ready = "sleep 600"
ready_timeout = "3s"

[[steps]]
run = "echo never"
'''
    repo, _ = make_repo({".forgeci.toml": toml})
    async with open_runtime(settings, {}) as rt:
        job_id = submit(rt, repo)
        running = await wait_state(rt, job_id, JobState.running)
        job = await wait_terminal(rt, job_id)
        text = log_text(rt, job_id)
        left = podman_listing(rt.user, settings.data_dir)
    assert job.state is JobState.failure and job.attempts == 1, text
    assert job.error == "service db was not ready within 3s (waiting for `sleep 600`)"
    assert running.started_at and job.finished_at and job.finished_at - running.started_at < 3 + 10
    assert "db | booting 1" in text and "db | booting 3" in text and "never" not in text
    assert left == ([], [])


async def test_a_service_that_exits_at_once_fails_the_job_and_one_that_crashes_mid_job_is_reported(
        settings: Settings, make_repo: MakeRepo, busybox_image: str) -> None:
    exits = f'''
[services.db]
image = "{busybox_image}"
command = ["sh", "-c", "echo 'FATAL: no config' >&2; exit 3"]
[[steps]]
run = "echo never"
'''
    crashes = f'''
[services.db]
image = "{busybox_image}"
command = ["sh", "-c", "echo up; sleep 1; echo 'segfault, bye' >&2; exit 7"]
[[steps]]
name = "work"
run = "sleep 3; echo still here"
'''
    early, _ = make_repo({".forgeci.toml": exits})
    late, _ = make_repo({".forgeci.toml": crashes})
    async with open_runtime(settings, {}) as rt:
        job = await wait_terminal(rt, submit(rt, early))
        early_text = log_text(rt, job.id)
        crashed = await wait_terminal(rt, submit(rt, late))
        late_text = log_text(rt, crashed.id)
    assert job.state is JobState.failure and job.error == "service db exited with code 3 before it was ready"
    assert "db | FATAL: no config" in early_text
    assert crashed.state is JobState.success, late_text  # the steps decide; the crash is reported
    assert "service db stopped during the job (exit code 7)" in late_text and "db | segfault, bye" in late_text
    assert late_text.index("stopped during the job") < late_text.index("step work ok")


@pytest.mark.parametrize("ending", ["success", "failure", "timeout", "cancel"])
async def test_no_pod_or_container_is_left_after_any_ending(
        settings: Settings, make_repo: MakeRepo, busybox_image: str, ending: str) -> None:
    run = {"success": "true", "failure": "exit 3", "timeout": "sleep 600", "cancel": "echo go; sleep 600"}[ending]
    toml = f'''
[services.stubborn]
image = "{busybox_image}"
command = ["sh", "-c", "trap '' TERM; echo ignoring SIGTERM; while :; do sleep 1; done"]
[[steps]]
name = "s"
run = "{run}"
timeout = "2s"
'''
    repo, _ = make_repo({".forgeci.toml": toml})
    async with open_runtime(settings, {}) as rt:
        job_id = submit(rt, repo)
        if ending == "cancel":
            deadline = time.monotonic() + 30
            while "go" not in log_lines(rt, job_id, "s") and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await rt.control.cancel(job_id)
        job = await wait_terminal(rt, job_id)
        left = podman_listing(rt.user, settings.data_dir)
        steps_end = job.steps[0].finished_at if job.steps else None
    expected = {"success": JobState.success, "failure": JobState.failure, "timeout": JobState.timeout,
                "cancel": JobState.cancelled}[ending]
    assert job.state is expected, log_text(rt, job.id)
    assert left == ([], [])
    # Killed before the pod is removed: a service ignoring SIGTERM does not hold the removal up for 10 s.
    assert steps_end is not None and job.finished_at is not None and job.finished_at - steps_end < 5


async def test_startup_reaps_a_leftover_pod_with_its_services(
        settings: Settings, busybox_image: str, podman_user: PodmanUser) -> None:
    async with open_runtime(settings, {}, workers=False) as rt:
        hosts = rt.layout.pods / "77.hosts"
        hosts.write_text("127.0.0.1\tlocalhost\n")
        hosts.chmod(0o644)
        pod = await rt.engine.start_pod(PodSpec(77, "none", "forgeci-job-77"))
        await rt.engine.start_service(ServiceContainerSpec(77, "db", busybox_image, pod, hosts,
                                                           command=["sleep", "600"]))
        assert podman_listing(podman_user, settings.data_dir)[0] == [pod]
    async with open_runtime(settings, {}):  # the start-up reap
        left = podman_listing(podman_user, settings.data_dir)
    assert left == ([], []) and not hosts.exists()


async def test_forgeci_run_starts_the_same_services(
        settings: Settings, make_repo: MakeRepo, busybox_image: str, podman_user: PodmanUser) -> None:
    toml = ECHO_SERVICE.format(image=busybox_image, who="local") + \
        '[[steps]]\nname = "ask"\nrun = "nc echo 8080 </dev/null"\n'
    repo, _ = make_repo({".forgeci.toml": toml})
    out = io.StringIO()
    run = await run_local(settings, repo, environ={}, out=out)
    assert run.succeeded and [job.state for job in run.jobs] == [JobState.success], out.getvalue()
    assert "[ask] local" in out.getvalue() and "service echo ready in" in out.getvalue()
    pods = podman_user.run(["podman", "pod", "ps", "--format", '{{index .Labels "forgeci.instance"}}']).stdout
    assert str(settings.data_dir) not in pods.decode()  # its private data dir is below this one

