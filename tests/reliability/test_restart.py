"""Restarts reap by instance: kill -9 of `forgeci serve` with two running jobs; a second serve on one data dir."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.podman_user import PodmanUser
from tests.bot.webhook_helpers import FakeForge, fake_forge
from tests.conftest import git
from tests.reliability.harness import (
    REPO_ROOT, SECRET_ENV, Ledger, ServeProcess, deliver, free_port, jobs_of, planned, push_payload, read_db, scrub,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.podman]
__all__ = ["fake_forge"]  # a fixture

MakeRepo = Callable[..., tuple[Path, str]]
LEASE = 600  # seconds: a restart that waited out the lease would blow every bound below
WORK = '''snapshot = "never"
[[steps]]
name = "work"
run = "echo attempt of job $FORGECI_JOB_ID; sleep 3; echo done"
'''
ENV = {**SECRET_ENV, "FORGECI_GITHUB_TOKEN": "ghp-restart"}


def running(db: Path) -> set[int]:
    return {row[0] for row in read_db(db, "SELECT id FROM jobs WHERE state = 'running'")}


def steps_started(db: Path, ids: set[int]) -> bool:
    rows = read_db(db, "SELECT job_id FROM steps WHERE started_at IS NOT NULL")
    return ids <= {row[0] for row in rows}


async def until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll without blocking the loop (the stand-in forge answers on it)."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        await asyncio.sleep(0.1)


async def test_kill_9_with_two_running_jobs_requeues_both_at_once_and_no_status_stays_pending(
        make_repo: MakeRepo, shared_dir: Path, busybox_image: str, podman_user: PodmanUser,
        fake_forge: FakeForge) -> None:
    repo, first_sha = make_repo({".forgeci.toml": WORK})
    git(repo, "checkout", "-q", "-b", "other")
    (repo / "README").write_text("another commit, so each job has a commit status of its own\n")
    git(repo, "add", "README")
    git(repo, "commit", "-qm", "other")
    second_sha = git(repo, "rev-parse", "HEAD")
    data_dir = shared_dir / "data"
    db = data_dir / "queue.db"
    port = free_port()
    config = write_config(shared_dir / "forgeci.toml", data_dir, port, busybox_image,
                          queue={"lease_seconds": LEASE}, github={"api_url": fake_forge.url})
    server = ServeProcess(config, port, shared_dir / "serve.log", env=ENV)
    ledger = Ledger()
    try:
        await asyncio.to_thread(server.start)
        pipelines = [*await asyncio.to_thread(deliver, server.url, push_payload(str(repo), "refs/heads/main",
                                                                                 first_sha), ledger),
                     *await asyncio.to_thread(deliver, server.url, push_payload(str(repo), "refs/heads/other",
                                                                                 second_sha), ledger)]
        ids = set(await asyncio.to_thread(planned, db, pipelines))  # one job each, planned by the coordinator
        assert len(ids) == 2
        await until(lambda: running(db) == ids and steps_started(db, ids), 60, "both jobs running their step")
        await asyncio.to_thread(server.kill)
        assert running(db) == ids

        restarted = time.monotonic()
        await asyncio.to_thread(server.start)
        # At once: the holder of the data dir's lock requeues what its instance left running (attempts + 1).
        await until(lambda: all(j.attempts == 2 for j in jobs_of(db, ids).values()), 30,
                    "both interrupted jobs claimed again (attempt 2)")
        requeued_in = time.monotonic() - restarted
        await until(lambda: all(j.state == "success" for j in jobs_of(db, ids).values()), 120,
                    "both jobs finished on their second attempt")
        for sha in (first_sha, second_sha):
            await until(lambda sha=sha: final_state(fake_forge, sha) == "success", 30,
                        f"the final commit status of {sha[:12]}")
        code = await asyncio.to_thread(server.terminate)
        assert code == 0, server.text()[-3000:]
    finally:
        await asyncio.to_thread(server.stop)
        scrub(podman_user, data_dir)

    assert requeued_in < LEASE / 10
    assert "was running when its runner" in server.text()  # the start-up reap, not a lease expiry
    for sha in (first_sha, second_sha):
        states = [post.body["state"] for post in fake_forge.statuses() if post.path.endswith(f"/statuses/{sha}")]
        assert states[0] == "pending" and states[-1] == "success", states
        assert "pending" not in states[states.index("success"):], states  # never pending after the final one


def final_state(forge: FakeForge, sha: str) -> str | None:
    posts = [post for post in forge.statuses() if post.path.endswith(f"/statuses/{sha}")]
    return posts[-1].body["state"] if posts else None


def test_a_second_serve_on_one_data_dir_exits_2_naming_the_holder_and_run_still_works(
        make_repo: MakeRepo, shared_dir: Path, busybox_image: str, podman_user: PodmanUser) -> None:
    data_dir = shared_dir / "data"
    first_port, second_port = free_port(), free_port()
    first = ServeProcess(write_config(shared_dir / "one.toml", data_dir, first_port, busybox_image), first_port,
                         shared_dir / "one.log")
    second_config = write_config(shared_dir / "two.toml", data_dir, second_port, busybox_image)
    repo, _ = make_repo({".forgeci.toml": '[[steps]]\nname = "hi"\nrun = "echo beside a server"\n'})
    try:
        first.start()
        second = subprocess.run([sys.executable, "-m", "forgeci_cli", "--config", str(second_config), "serve"],
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                                env={**os.environ, **SECRET_ENV})
        assert second.returncode == 2, second.stderr
        assert f"another forgeci serve (pid {first.pid})" in second.stderr and str(data_dir) in second.stderr
        assert "listening on" not in second.stdout
        # `forgeci run` opens the same settings (and data dir) and needs no lock.
        run = subprocess.run([sys.executable, "-m", "forgeci_cli", "--config", str(second_config), "run", str(repo)],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
                             env={**os.environ, **SECRET_ENV})
        assert run.returncode == 0, run.stdout + run.stderr
        assert "beside a server" in run.stdout
        # The first server is untouched: its Podman service answers.
        status, health = first.request("GET", "/healthz")
        assert status == 200 and health["engine"] is True
    finally:
        first.stop()
        scrub(podman_user, data_dir)
