"""`forgeci serve` as a process with `[queue] url` on PostgreSQL (a throwaway cluster) and real rootless Podman:
the README's quick start pipeline (this repository's own .forgeci.toml, as `make demo` submits it), a pipeline of
several jobs with needs, and PostgreSQL restarted under a running job: the server reconnects, the job finishes
once, work committed after the restart by another process is claimed through the re-established LISTEN."""

from __future__ import annotations

import subprocess
import tarfile
import io
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runner.models import JobSpec
from runner.queue.postgres_queue import PostgresQueue
from tests.conftest import git
from tests.postgres import Cluster
from tests.reliability.harness import REPO_ROOT, ServeProcess, free_port, serving, wait_for, write_config

pytestmark = [pytest.mark.slow, pytest.mark.podman]

LEASE = 600  # the claim loop's idle poll is 200 s: a job another process commits runs at once only through NOTIFY
NEEDS = '''snapshot = "never"
[jobs.build]
steps = [{ name = "build", run = "echo built > /workspace/out; sleep 1" }]
[jobs.lint]
steps = [{ name = "lint", run = "echo lint" }]
[jobs.test]
needs = ["build", "lint"]
steps = [{ name = "test", run = "echo testing" }]
[jobs.deploy]
needs = ["test"]
steps = [{ name = "deploy", run = "echo deployed" }]
'''
SLOW = '''snapshot = "never"
[[steps]]
name = "work"
run = "echo begin; sleep 8; echo end"
'''


def quickstart_repo(target: Path) -> tuple[Path, str]:
    """This checkout's committed tree (what `make demo` submits at HEAD), as a repository the Podman user reads."""
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", "--format=tar", "HEAD"], check=True,
                             capture_output=True).stdout
    target.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    git(target, "init", "-q", "-b", "main")
    git(target, "add", "-A")
    git(target, "commit", "-qm", "the quick start")
    for sub in [target, *target.rglob("*")]:
        sub.chmod(sub.stat().st_mode | 0o055)
    return target, git(target, "rev-parse", "HEAD")


def server_for(shared_dir: Path, image: str, url: str) -> ServeProcess:
    port = free_port()
    config = write_config(shared_dir / "forgeci.toml", shared_dir / "data", port, image,
                          queue={"url": url, "lease_seconds": LEASE, "max_concurrent": 2},
                          runner={"podman_service": "private"})
    return ServeProcess(config, port, shared_dir / "serve.log")


def submit(server: ServeProcess, repo: Path, sha: str) -> dict[str, Any]:
    status, body = server.request("POST", "/jobs/submit", {"repo": str(repo), "ref": "main", "sha": sha})
    assert status == 201, (status, body)
    return body


def finished(server: ServeProcess, job_id: int, timeout: float) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status, job = server.request("GET", f"/jobs/status?id={job_id}")
        assert status == 200, job
        return job if job["state"] not in ("queued", "running") else None

    return wait_for(done, timeout, f"job {job_id} finished", interval=0.3)


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def test_the_quick_start_and_a_pipeline_with_needs_run_on_postgresql(
        shared_dir: Path, job_image: str, pg_url: str) -> None:
    quick, quick_sha = quickstart_repo(shared_dir / "quickstart")
    with serving(server_for(shared_dir, job_image, pg_url)) as server:
        job = finished(server, submit(server, quick, quick_sha)["id"], 300)
        assert job["state"] == "success", (job, server.text()[-3000:])
        assert [step["name"] for step in job["steps"]] == ["compile", "pipeline", "summary"]
        log = (shared_dir / "data" / "logs" / f"{job['id']}.log").read_text()
        assert "every module compiles" in log and "3 steps in .forgeci.toml" in log

        repo = shared_dir / "needs"
        repo.mkdir()
        (repo / ".forgeci.toml").write_text(NEEDS)
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "needs")
        for sub in [repo, *repo.rglob("*")]:
            sub.chmod(sub.stat().st_mode | 0o055)
        submitted = submit(server, repo, git(repo, "rev-parse", "HEAD"))
        jobs = {found["display"]: found for found in (finished(server, i, 300) for i in submitted["jobs"])}
        assert {name: found["state"] for name, found in jobs.items()} == dict.fromkeys(
            ("build", "lint", "test", "deploy"), "success"), jobs
        start = {name: found["started_at"] for name, found in jobs.items()}
        end = {name: found["finished_at"] for name, found in jobs.items()}
        assert start["test"] >= max(end["build"], end["lint"]) and start["deploy"] >= end["test"]
        status, pipeline = server.request("GET", f"/pipelines/{submitted['pipeline']}")
        assert status == 200 and pipeline["state"] == "success", pipeline
    assert rows(pg_url, "SELECT state, count(*) FROM jobs GROUP BY state") == [("success", 5)]
    assert not (shared_dir / "data" / "queue.db").exists()  # no SQLite file beside PostgreSQL


def test_postgresql_restarted_under_a_running_job(shared_dir: Path, busybox_image: str,
                                                  own_pg_cluster: Cluster) -> None:
    url = own_pg_cluster.new_database()
    repo = shared_dir / "slow"
    repo.mkdir()
    (repo / ".forgeci.toml").write_text(SLOW)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "slow")
    for sub in [repo, *repo.rglob("*")]:
        sub.chmod(sub.stat().st_mode | 0o055)
    sha = git(repo, "rev-parse", "HEAD")
    with serving(server_for(shared_dir, busybox_image, url)) as server:
        running = submit(server, repo, sha)["id"]

        def step_started() -> bool:
            return bool(rows(url, f"SELECT 1 FROM steps WHERE job_id = {running} AND started_at IS NOT NULL"))

        wait_for(step_started, 120, "the step started")
        own_pg_cluster.restart()  # fast stop: every connection of the server is cut mid-job
        job = finished(server, running, 120)
        assert job["state"] == "success" and job["attempts"] == 1, job  # finished once, not requeued
        assert [(s["name"], s["state"]) for s in job["steps"]] == [("work", "success")]
        log = (shared_dir / "data" / "logs" / f"{running}.log").read_text()
        assert "begin" in log and "end" in log

        # Another process commits a job after the restart: only the server's re-established LISTEN makes it
        # look before its 200 s poll.
        wait_for(lambda: "queue wake-ups: listening again" in server.text(), 60, "the listener reconnected")
        committed = time.monotonic()
        with PostgresQueue(url, pool_size=1) as other:
            pipeline = {"snapshot": "never", "steps": [{"name": "after", "run": "echo after the restart"}]}
            after = other.enqueue(JobSpec(repo=str(repo), ref="main", sha=sha, pipeline=pipeline))
        assert finished(server, after, 60)["state"] == "success"
        assert time.monotonic() - committed < 60
        assert server.terminate() == 0
    assert rows(url, "SELECT id, state, attempts FROM jobs ORDER BY id") == [(running, "success", 1),
                                                                            (after, "success", 1)]
