"""Caches in real jobs (rootless Podman): detection, a hit on a new commit, and an S3 store that dies mid-job."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from config.settings import Settings, StorageSettings
from runner.models import JobState, StepState
from runner.runtime import Runtime, open_runtime
from tests.conftest import git
from tests.runner.test_executor import log_text, submit, wait_terminal
from tests.runner.test_store import MotoServer

pytestmark = [pytest.mark.slow, pytest.mark.podman]

MakeRepo = Callable[..., tuple[Path, str]]

INSTALL = """
[[steps]]
name = "install"
run = '''
echo "npm cache at $npm_config_cache"
if [ -f node_modules/dep/index.js ]; then echo "dependencies were restored"; else
  mkdir -p node_modules/dep "$npm_config_cache" && echo built > node_modules/dep/index.js && echo tarball > "$npm_config_cache/t"
fi
'''
"""


def commit(repo: Path, files: dict[str, str]) -> str:
    for rel, text in files.items():
        (repo / rel).write_text(text)
        (repo / rel).chmod(0o644)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "next")
    return git(repo, "rev-parse", "HEAD")


def system_lines(rt: Runtime, job_id: int) -> str:
    return log_text(rt, job_id)


async def test_a_new_commit_with_the_same_lockfile_hits(runtime: Runtime, make_repo: MakeRepo) -> None:
    repo, first_sha = make_repo({".forgeci.toml": INSTALL, "package-lock.json": '{"v": 1}', "index.js": "1"})
    first = await wait_terminal(runtime, submit(runtime, repo, sha=first_sha))
    text = log_text(runtime, first.id)
    assert first.state is JobState.success, text
    assert "cache: detected from package-lock.json: .forgeci-cache/npm, node_modules" in text
    assert "npm cache at /workspace/.forgeci-cache/npm" in text
    assert "cache: miss " in text and "cache: saved " in text and first.cache_hit is False
    [entry] = runtime.queue.cache_entries()
    assert first_sha not in entry.key

    second_sha = commit(repo, {"index.js": "2"})
    second = await wait_terminal(runtime, submit(runtime, repo, sha=second_sha))
    text = log_text(runtime, second.id)
    assert second.state is JobState.success, text
    assert f"cache: hit {entry.key} (" in text and "MB/s" in text
    assert "dependencies were restored" in text and second.cache_hit is True
    assert "already exists" in text and "not uploaded again" in text
    assert runtime.queue.cache_entry(entry.key).hits == 1  # type: ignore[union-attr]

    third_sha = commit(repo, {"package-lock.json": '{"v": 2}'})
    third = await wait_terminal(runtime, submit(runtime, repo, sha=third_sha))
    text = log_text(runtime, third.id)
    assert "fallback hit" in text and "dependencies were restored" in text and third.cache_hit is False
    assert len(runtime.queue.cache_entries()) == 2


@pytest.fixture
async def s3_runtime(settings: Settings) -> AsyncIterator[tuple[Runtime, MotoServer]]:
    server = MotoServer()  # its own server: this test stops it
    server.start()
    storage = StorageSettings(url=server.url("forgeci"), access_key_env="AK", secret_key_env="SK")
    try:
        async with open_runtime(dataclasses.replace(settings, storage=storage), {"AK": "id", "SK": "secret"}) as rt:
            # Fail fast once the server is gone.
            rt.store.backoff = 0.05  # type: ignore[attr-defined]
            yield rt, server
    finally:
        server.stop()


WAITING = """
[[steps]]
name = "wait"
run = "while [ ! -f go ]; do sleep 0.1; done; echo got go"

[[steps]]
name = "done"
run = "mkdir -p node_modules/dep && echo finished"
"""


async def wait_for_step(rt: Runtime, job_id: int, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(s.name == name and s.state is StepState.running for s in rt.queue.get(job_id).steps):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"step {name} of job {job_id} never ran")


async def test_the_s3_server_stopped_in_the_middle_of_a_job(s3_runtime: tuple[Runtime, MotoServer],
                                                            make_repo: MakeRepo) -> None:
    rt, server = s3_runtime
    repo, _ = make_repo({".forgeci.toml": WAITING, "package-lock.json": "{}"})
    job_id = submit(rt, repo)
    await wait_for_step(rt, job_id, "wait")
    assert rt.store.health(max_age=0).ok
    server.stop()
    (rt.layout.workspaces / str(job_id) / "go").write_text("")
    job = await wait_terminal(rt, job_id)
    text = log_text(rt, job_id)
    assert job.state is JobState.success, text  # the job's state depends only on its steps
    assert [s.state for s in job.steps] == [StepState.success, StepState.success]
    assert "cache: miss " in text and "cache: warning: not saved" in text
    assert "snapshot: warning: not saved" in text and "connection refused" in text
    assert rt.queue.cache_entries() == [] and rt.queue.snapshot(job_id) is None
    assert not rt.store.health(max_age=0).ok

    server.start()  # back: a job saves again
    job_id = submit(rt, repo)
    await wait_for_step(rt, job_id, "wait")
    (rt.layout.workspaces / str(job_id) / "go").write_text("")
    assert (await wait_terminal(rt, job_id)).state is JobState.success
    assert len(rt.queue.cache_entries()) == 1 and rt.queue.snapshot(job_id) is not None

    server.stop()  # down from the start: the indexed cache cannot be fetched, which is a miss with a warning
    job_id = submit(rt, repo)
    await wait_for_step(rt, job_id, "wait")
    (rt.layout.workspaces / str(job_id) / "go").write_text("")
    job = await wait_terminal(rt, job_id)
    text = log_text(rt, job_id)
    assert job.state is JobState.success and job.cache_hit is False
    assert "cache: warning: the store is unavailable" in text and "continuing without a cache" in text
