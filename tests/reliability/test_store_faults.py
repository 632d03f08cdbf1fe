"""Store faults under real jobs: S3 slowed, silent, answering 500s, corrupting data, and stopped mid-upload.

tests/runner/test_cache_jobs.py stops the S3 server while a job's step runs; here a proxy between forgeci and the
S3 server (moto's, over HTTP) injects each fault in turn, and the last one takes the server away while an upload
is on the wire. Every job must end as its steps decide, with its caches degraded to misses and the log saying why.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from config.settings import Settings, StorageSettings
from runner.models import Job, JobState
from runner.runtime import Runtime, open_runtime
from runner.store import S3Location, S3Store
from tests.conftest import git
from tests.reliability.harness import Ledger, plural
from tests.reliability.report import Row
from tests.reliability.proxy import FaultProxy
from tests.runner.test_executor import log_text, submit, wait_terminal
from tests.runner.test_store import MotoServer

pytestmark = [pytest.mark.slow, pytest.mark.podman]

MakeRepo = Callable[..., tuple[Path, str]]
PIPELINE = '''snapshot = "always"
[cache]
paths = ["deps"]
key_files = ["lock"]
[[steps]]
name = "build"
run = """
if [ -f deps/ok ]; then echo deps restored; else
  mkdir -p deps && head -c 3000000 /dev/urandom > deps/blob && echo ok > deps/ok && echo deps built
fi
"""
'''


@dataclasses.dataclass
class World:
    rt: Runtime
    proxy: FaultProxy
    moto: MotoServer


@pytest.fixture
async def world(settings: Settings) -> AsyncIterator[World]:
    moto = MotoServer()
    moto.start()
    proxy = FaultProxy(moto.endpoint)
    await proxy.start()
    storage = StorageSettings(url=f"s3://forgeci?endpoint={proxy.endpoint}", access_key_env="AK", secret_key_env="SK")
    try:
        async with open_runtime(dataclasses.replace(settings, storage=storage), {"AK": "id", "SK": "secret"}) as rt:
            rt.store.backoff = 0.05  # type: ignore[attr-defined] - retries without the long back-off
            yield World(rt, proxy, moto)
    finally:
        await proxy.close()
        moto.stop()


def shorten_timeouts(rt: Runtime, endpoint: str) -> None:
    """The same S3 store with 1.5 s timeouts and 2 attempts, so that a silent server costs seconds, not minutes
    (the defaults wait 30 s per read, twice per attempt, 3 attempts)."""
    store = S3Store(S3Location.parse(f"s3://forgeci?endpoint={endpoint}"), "id", "secret", connect_timeout=1.0,
                    read_timeout=1.5, attempts=2, backoff=0.05)
    store._bucket_ready = True  # created by the earlier jobs
    rt.store = rt.cache.store = rt.snapshots.store = store


def commit(repo: Path, files: dict[str, str]) -> str:
    for name, text in files.items():
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "change")
    return git(repo, "rev-parse", "HEAD")


async def test_store_faults_under_running_jobs(world: World, make_repo: MakeRepo, report: Callable[[str], Row]) -> None:
    rt, proxy, moto = world.rt, world.proxy, world.moto
    repo, sha = make_repo({".forgeci.toml": PIPELINE, "lock": "v1"})
    ledger = Ledger()

    async def job(commit_sha: str = sha) -> tuple[Job, str, float]:
        started = time.monotonic()
        job_id = submit(rt, repo, sha=commit_sha)
        ledger.submitted_job(job_id)
        done = await wait_terminal(rt, job_id, timeout=180)
        text = log_text(rt, job_id)
        assert done.state is JobState.success, text  # whatever the store does, the steps decide
        return done, text, time.monotonic() - started

    first, text, plain = await job()
    assert "cache: miss" in text and "cache: saved" in text and "snapshot: saved" in text, text

    row = report("S3 slowed: a proxy delays every request by 0.5 s")
    proxy.mode, proxy.delay = "slow", 0.5
    done, text, took = await job()
    assert "cache: hit" in text and "deps restored" in text and "snapshot: saved" in text, text
    row.happened = (f"job `success`, cache hit and snapshot saved, only slower: {took:.1f} s against {plain:.1f} s "
                    f"({plural(proxy.count('slow'), 'delayed request')})")
    assert row.count(ledger, rt.layout.db).total == 0

    row = report("S3 silent: requests accepted, never answered (client timeouts 1.5 s)")
    proxy.mode = "stall"
    shorten_timeouts(rt, proxy.endpoint)
    done, text, took = await job()
    assert "cache: warning: the store is unavailable" in text and "timed out" in text, text
    assert "deps built" in text and "snapshot: warning: not saved" in text and done.cache_hit is False, text
    row.happened = (f"job `success` in {took:.0f} s with a cache miss; the log says "
                    f"\"{line_with(text, 'cache: warning')}\" and the snapshot was not saved, also said")
    assert row.count(ledger, rt.layout.db).total == 0

    row = report("S3 failing: every request answered 500 InternalError")
    proxy.mode = "error"
    done, text, took = await job()
    assert "cache: warning: the store is unavailable" in text and "InternalError" in text, text
    assert "snapshot: warning: not saved" in text and done.cache_hit is False, text
    assert not rt.store.health(max_age=0).ok
    row.happened = (f"job `success` with a cache miss; \"{line_with(text, 'cache: warning')}\"; snapshot not saved; "
                    f"/healthz reports the store down (jobs go on)")
    assert row.count(ledger, rt.layout.db).total == 0

    row = report("S3 corrupting: object data comes back with flipped bytes")
    proxy.mode = "corrupt"
    [entry] = rt.queue.cache_entries()
    done, text, took = await job()
    assert f"cache: {entry.key} cannot be restored (" in text and "counted as a miss" in text, text
    assert "deps built" in text and done.cache_hit is False, text
    assert [e.object for e in rt.queue.cache_entries()] != [entry.object], "the corrupted entry was kept"
    row.happened = f"job `success`; \"{line_with(text, 'cannot be restored')}\"; a fresh entry was saved in its place"
    assert row.count(ledger, rt.layout.db).total == 0

    row = report("S3 stopped mid-job: the server and its connections go while the job's cache upload is on the wire")
    proxy.mode = "hold_uploads"
    new_sha = commit(repo, {"lock": "v2"})
    running = asyncio.ensure_future(job(new_sha))
    await asyncio.wait_for(proxy.upload_held.wait(), 120)
    await proxy.down()
    moto.stop()
    done, text, took = await running
    assert "cache: warning: not saved (" in text and "snapshot: warning: not saved (" in text, text
    assert len(rt.queue.cache_entries()) == 1 and rt.queue.snapshot(done.id) is None
    assert not rt.store.health(max_age=0).ok
    row.happened = (f"job `success`; \"{line_with(text, 'cache: warning: not saved')}\"; the snapshot not saved "
                    f"either; no index entry without its object; /healthz reports the store down")
    assert row.count(ledger, rt.layout.db).total == 0


def line_with(text: str, needle: str) -> str:
    """The first log line with `needle`, its cache keys and object names cut short for the table."""
    line = next(line for line in text.splitlines() if needle in line)
    return re.sub(r"(caches/)?local/\S+?(?=[ :)])", "KEY", line)[:200]
