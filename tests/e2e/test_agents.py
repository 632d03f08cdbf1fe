"""Remote runners for real: one `forgeci serve` with `runner.embedded = false`, two `forgeci agent` processes with
data dirs (and rootless Podman services) of their own, moto's S3 server as the store they share."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.agent_cluster import Cluster
from tests.runner.test_store import MotoServer, moto_server

__all__ = ["moto_server"]

pytestmark = [pytest.mark.slow, pytest.mark.podman]

MakeRepo = Callable[..., tuple[Path, str]]
# Two builds at once (each agent runs one job at a time, so they land on both), each with the cache and an
# artifact; the check needs both and receives both artifacts, one of them from the other agent.
SPREAD = '''
snapshot = "never"
[cache]
paths = ["deps"]
key_files = ["lock.txt"]
[jobs.build-a]
artifacts = { paths = ["dist/**"] }
[[jobs.build-a.steps]]
name = "build"
run = "mkdir -p dist deps && test -f deps/cached && echo cache-was-there; echo deps > deps/cached; sleep 4; echo made-by-a > dist/a.txt"
[jobs.build-b]
artifacts = { paths = ["dist/**"] }
[[jobs.build-b.steps]]
name = "build"
run = "mkdir -p dist deps && test -f deps/cached && echo cache-was-there; echo deps > deps/cached; sleep 4; echo made-by-b > dist/b.txt"
[jobs.check]
needs = ["build-a", "build-b"]
[[jobs.check.steps]]
name = "check"
run = "cat dist/a.txt dist/b.txt"
'''


@pytest.fixture
def cluster(shared_dir: Path, moto_server: MotoServer, busybox_image: str) -> Iterator[Cluster]:
    made = Cluster(shared_dir, moto_server, busybox_image, lease=6)
    try:
        yield made
    finally:
        made.stop()


def jobs_by_name(record: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {job["name"]: job for job in record["jobs"]}


def agent_of(job: dict) -> str:  # type: ignore[type-arg]
    runner = job["runner_id"] or ""
    assert runner.startswith("agent:"), job
    return runner.split(":")[2]


def test_a_pipeline_spreads_over_two_agents_with_artifacts_and_caches_across(
        cluster: Cluster, make_repo: MakeRepo) -> None:
    repo, sha = make_repo({".forgeci.toml": SPREAD, "lock.txt": "v1\n"})
    cluster.start_server()
    cluster.start_agent("one")
    cluster.start_agent("two")
    record = cluster.wait_pipeline(cluster.submit(repo, sha))
    assert record["state"] == "success", record
    jobs = {name: cluster.job(job["id"]) for name, job in jobs_by_name(record).items()}
    assert {agent_of(jobs["build-a"]), agent_of(jobs["build-b"])} == {"one", "two"}, jobs
    text = [line["x"] for line in cluster.log(jobs["check"]["id"])]
    assert "made-by-a" in text and "made-by-b" in text, text
    # Again: both builds restore the cache one of them saved, so one restores what the other agent saved.
    again = cluster.wait_pipeline(cluster.submit(repo, sha))
    assert again["state"] == "success", again
    rerun = {name: cluster.job(job["id"]) for name, job in jobs_by_name(again).items()}
    assert {agent_of(rerun["build-a"]), agent_of(rerun["build-b"])} == {"one", "two"}, rerun
    for name in ("build-a", "build-b"):
        assert rerun[name]["cache_hit"] is True, rerun[name]
        assert "cache-was-there" in [line["x"] for line in cluster.log(rerun[name]["id"])]


SLOW = '''
snapshot = "never"
[[steps]]
name = "slow"
run = "for i in $(seq 1 12); do echo tick $i; sleep 1; done"
'''


def wait_until(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_9_of_an_agent_reruns_its_job_on_the_other(cluster: Cluster, make_repo: MakeRepo) -> None:
    repo, sha = make_repo({".forgeci.toml": SLOW})
    cluster.start_server()
    one = cluster.start_agent("one")
    pipeline_id = cluster.submit(repo, sha)
    [job_id] = [job["id"] for job in cluster.pipeline(pipeline_id)["jobs"]]
    wait_until(lambda: any(line["x"] == "tick 2" for line in _log(cluster, job_id)), 120, "the first ticks")
    cluster.start_agent("two")
    cluster.kill9(one)
    killed = time.monotonic()
    wait_until(lambda: cluster.job(job_id)["attempts"] == 2 and cluster.job(job_id)["state"] == "running"
               and cluster.job(job_id)["steps"], 120, "the re-run's first step")
    print(f"\nkill -9 to the re-run's first step: {time.monotonic() - killed:.1f}s (lease {cluster.lease}s)")
    record = cluster.wait_pipeline(pipeline_id)
    job = cluster.job(job_id)
    assert record["state"] == "success" and agent_of(job) == "two", job
    assert "lease expired" in (cluster.output("server") + str(job)) or job["attempts"] == 2
    # Back, the killed agent reaps what it left: its job container and workspace.
    cluster.start_agent("one")
    wait_until(lambda: "removed leftover workspaces of jobs" in cluster.output("one"), 120, "agent one's reap")
    assert "removing leftover container" in cluster.output("one")
    assert not list((cluster.base / "one" / "workspaces").glob("[0-9]*"))


def _log(cluster: Cluster, job_id: int) -> list[dict]:  # type: ignore[type-arg]
    try:
        return cluster.log(job_id)
    except FileNotFoundError:
        return []


def test_revoking_a_token_refuses_the_agent_and_requeues_its_job(cluster: Cluster, make_repo: MakeRepo) -> None:
    repo, sha = make_repo({".forgeci.toml": SLOW})
    cluster.start_server()
    one = cluster.start_agent("one")
    pipeline_id = cluster.submit(repo, sha)
    [job_id] = [job["id"] for job in cluster.pipeline(pipeline_id)["jobs"]]
    wait_until(lambda: any(line["x"] == "tick 2" for line in _log(cluster, job_id)), 120, "the first ticks")
    done = cluster.cli("agents", "token", "revoke", "one")
    assert done.returncode == 0 and f"requeued jobs [{job_id}]" in done.stdout, done.stdout + done.stderr
    assert one.wait(60) == 2, cluster.output("one")  # refused at its next call: it stops
    assert "refused this agent's token" in cluster.output("one")
    cluster.start_agent("two")
    record = cluster.wait_pipeline(pipeline_id)
    assert record["state"] == "success" and agent_of(cluster.job(job_id)) == "two"
    wrong = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H",
                            "Authorization: Bearer nope", f"{cluster.url}/agent/v1/claim"],
                           capture_output=True, text=True, timeout=30, check=False)
    assert wrong.stdout == "401"


TICKS = '''
snapshot = "never"
[jobs.left]
[[jobs.left.steps]]
name = "ticks"
run = "for i in $(seq 1 16); do echo left $i; sleep 1; done"
[jobs.right]
[[jobs.right.steps]]
name = "ticks"
run = "for i in $(seq 1 16); do echo right $i; sleep 1; done"
'''


def test_kill_9_of_the_coordinator_and_a_restart_within_the_grace_loses_and_duplicates_nothing(
        cluster: Cluster, make_repo: MakeRepo) -> None:
    repo, sha = make_repo({".forgeci.toml": TICKS})
    cluster.start_server()
    cluster.start_agent("one")
    cluster.start_agent("two")
    pipeline_id = cluster.submit(repo, sha)
    jobs = {job["name"]: job["id"] for job in cluster.pipeline(pipeline_id)["jobs"]}
    for name, job_id in jobs.items():
        wait_until(lambda name=name, job_id=job_id: any(line["x"] == f"{name} 3" for line in _log(cluster, job_id)),
                   120, f"{name}'s ticks")
    assert cluster.server is not None
    cluster.kill9(cluster.server)
    down = time.monotonic()
    time.sleep(cluster.lease + 2)  # longer than a lease: only the start-up grace keeps the jobs theirs
    cluster.start_server()
    print(f"\ncoordinator down for {time.monotonic() - down:.1f}s (lease {cluster.lease}s)")
    record = cluster.wait_pipeline(pipeline_id)
    assert record["state"] == "success", record
    for name, job_id in jobs.items():
        job = cluster.job(job_id)
        assert job["state"] == "success" and job["attempts"] == 1, job
        assert [step["state"] for step in job["steps"]] == ["success"], job
        lines = cluster.log(job_id)
        assert [line["n"] for line in lines] == list(range(1, len(lines) + 1)), lines
        ticks = [line["x"] for line in lines if line["o"] == "stdout"]
        assert ticks == [f"{name} {i}" for i in range(1, 17)], ticks
    assert {agent_of(cluster.job(job_id)) for job_id in jobs.values()} == {"one", "two"}
