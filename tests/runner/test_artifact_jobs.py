"""Artifacts between the jobs of a pipeline on the fake engine: through the server's runtime on both stores (a file
store, and moto's S3 server over HTTP), through `forgeci run`, and with the store gone during the upload."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from config.settings import Settings, StorageSettings
from runner.engine import OutputCallback
from runner.local import run_local
from runner.models import Job, JobSpec, JobState
from runner.runtime import Runtime, open_runtime
from tests.fake_engine import FakeEngine, Script
from tests.runner.test_pipelines import by_display, finished
from tests.runner.test_store import MotoServer, moto_server

__all__ = ["moto_server"]

MakeRepo = Callable[..., tuple[Path, str]]
BUILD_PUBLISH = '''
[jobs.build]
artifacts = { paths = ["dist/*.bin", "reports/**"] }
steps = [{ run = "build" }]
[jobs.publish]
needs = ["build"]
steps = [{ run = "publish" }]
'''
S3_KEYS = {"AK": "test-key", "SK": "test-secret"}


class SeeingEngine(FakeEngine):
    """The fake engine, noting the sha256 of some workspace files as each step starts (what the step would see)."""

    def __init__(self, look: Mapping[str, str]) -> None:
        super().__init__()
        self.look = dict(look)  # step run -> path in the workspace
        self.seen: dict[str, str | None] = {}

    async def exec(self, container_id: str, argv: Sequence[str], env: Mapping[str, str], on_output: OutputCallback,
                   workdir: str = "/workspace") -> int:
        container = self.containers.get(container_id)
        if container is not None and len(argv) > 1 and argv[1] in self.look:
            path = container.spec.workspace / self.look[argv[1]]
            self.seen[argv[1]] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        return await super().exec(container_id, argv, env, on_output, workdir)


def log_of(rt: Runtime, job: Job) -> str:
    return rt.layout.log_file(job.id).read_text()


@pytest.fixture(params=["file", "s3"])
def store_settings(request: pytest.FixtureRequest, fake_settings: Settings) -> Iterator[Settings]:
    if request.param == "file":
        yield fake_settings
        return
    server: MotoServer = request.getfixturevalue("moto_server")
    storage = StorageSettings(url=server.url(f"art{os.getpid()}{time.monotonic_ns() % 10**9}"), access_key_env="AK",
                              secret_key_env="SK")
    yield dataclasses.replace(fake_settings, storage=storage)


async def test_a_3mb_file_reaches_the_dependant_byte_for_byte(store_settings: Settings, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": BUILD_PUBLISH})
    blob = os.urandom(3_000_000)
    engine = SeeingEngine({"publish": "dist/app.bin"})
    engine.on("build", Script(files={"dist/app.bin": blob, "reports/junit.xml": "<ok/>"}))
    async with open_runtime(store_settings, S3_KEYS, engine=engine) as rt:
        submitted = await rt.control.submit_pipeline(JobSpec(repo=str(repo), ref="main"))
        jobs = by_display(await finished(rt, submitted.pipeline_id))
        build_log, publish_log = log_of(rt, jobs["build"]), log_of(rt, jobs["publish"])
        [record] = rt.queue.artifacts_of(pipeline_id=submitted.pipeline_id)
        objects = [o.key for o in rt.store.list("artifacts/")]
    assert jobs["build"].state is JobState.success and jobs["publish"].state is JobState.success, publish_log
    assert engine.seen["publish"] == hashlib.sha256(blob).hexdigest()
    assert "artifacts: kept 2 files, 3.0 MB (" in build_log and "MB/s), until " in build_log
    assert "artifacts: fetched 2 files of job build (" in publish_log
    assert {f.path for f in record.files} == {"dist/app.bin", "reports/junit.xml"} and objects == [record.object]
    engine.check()


async def test_when_failure_keeps_reports_only_when_the_job_fails(fake_settings: Settings,
                                                                 make_local_repo: MakeRepo) -> None:
    toml = '''
[jobs.test]
artifacts = { paths = ["reports"], when = "failure" }
matrix = { n = [1, 2] }
fail_fast = false
steps = [{ run = "test ${{ matrix.n }}" }]
[jobs.triage]
needs = ["test"]
if = "always"
steps = [{ run = "triage" }]
'''
    repo, _ = make_local_repo({".forgeci.toml": toml})
    engine = SeeingEngine({"triage": "reports/r.xml"})
    engine.on("test 1", Script(files={"reports/r.xml": "one passed"}))
    engine.on("test 2", Script(exit_code=1, files={"reports/r.xml": "two failed"}))
    async with open_runtime(fake_settings, {}, engine=engine) as rt:
        submitted = await rt.control.submit_pipeline(JobSpec(repo=str(repo), ref="main"))
        jobs = by_display(await finished(rt, submitted.pipeline_id))
        records = {r.display: r for r in rt.queue.artifacts_of(pipeline_id=submitted.pipeline_id)}
        passed_log, triage_log = log_of(rt, jobs["test (n=1)"]), log_of(rt, jobs["triage"])
    assert jobs["test (n=2)"].state is JobState.failure and jobs["triage"].state is JobState.success
    assert list(records) == ["test (n=2)"]  # only the failed member kept its reports
    assert 'artifacts: none kept: the job ended success, and `when = \\"failure\\"`' in passed_log
    assert engine.seen["triage"] == hashlib.sha256(b"two failed").hexdigest()
    assert "artifacts: job test (n=1) ended success and keeps artifacts only when it fails" in triage_log


async def test_a_link_to_etc_passwd_among_the_artifacts_is_left_out(fake_settings: Settings,
                                                                    make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": BUILD_PUBLISH})
    engine = SeeingEngine({"publish": "dist/passwd.bin"})
    engine.on("build", Script(files={"dist/app.bin": "app"}, links={"dist/passwd.bin": "/etc/passwd",
                                                                   "reports": "/etc"}))
    async with open_runtime(fake_settings, {}, engine=engine) as rt:
        submitted = await rt.control.submit_pipeline(JobSpec(repo=str(repo), ref="main"))
        jobs = by_display(await finished(rt, submitted.pipeline_id))
        [record] = rt.queue.artifacts_of(pipeline_id=submitted.pipeline_id)
        text = log_of(rt, jobs["build"])
    assert [f.path for f in record.files] == ["dist/app.bin"]
    assert "artifacts: left out dist/passwd.bin: a symbolic link to /etc/passwd, outside the workspace" in text
    assert "artifacts: reports/**: reports is a symbolic link; not followed" in text
    assert engine.seen["publish"] is None and jobs["publish"].state is JobState.success


async def test_artifacts_from_picks_the_needs_and_an_empty_list_fetches_none(fake_settings: Settings,
                                                                            make_local_repo: MakeRepo) -> None:
    toml = '''
artifacts = { paths = ["out"] }
[jobs.a]
steps = [{ run = "a" }]
[jobs.b]
steps = [{ run = "b" }]
[jobs.only_b]
needs = ["a", "b"]
artifacts_from = ["b"]
steps = [{ run = "only_b" }]
[jobs.none]
needs = ["a", "b"]
artifacts_from = []
steps = [{ run = "none" }]
'''
    repo, _ = make_local_repo({".forgeci.toml": toml})
    engine = SeeingEngine({"only_b": "out/a.txt", "none": "out/b.txt"})
    engine.on("a", Script(files={"out/a.txt": "a"}))
    engine.on("b", Script(files={"out/b.txt": "b"}))
    async with open_runtime(fake_settings, {}, engine=engine) as rt:
        submitted = await rt.control.submit_pipeline(JobSpec(repo=str(repo), ref="main"))
        jobs = by_display(await finished(rt, submitted.pipeline_id))
        text = log_of(rt, jobs["only_b"])
    assert all(job.state is JobState.success for job in jobs.values())
    assert engine.seen == {"only_b": None, "none": None}  # only_b got b's out/b.txt, not a's out/a.txt
    assert "artifacts: fetched 1 file of job b" in text and "of job a" not in text


async def test_the_store_gone_during_the_upload(fake_settings: Settings, make_local_repo: MakeRepo) -> None:
    """The job's own result stands, its log says the artifacts were not kept, and the dependant fails at once naming
    them: no hang, and no infrastructure retries (the index says what happened)."""
    server = MotoServer()  # its own server: this test stops it
    server.start()
    storage = StorageSettings(url=server.url("forgeci"), access_key_env="AK", secret_key_env="SK",
                              connect_timeout=0.5, read_timeout=2.0)
    repo, _ = make_local_repo({".forgeci.toml": BUILD_PUBLISH})
    engine = FakeEngine()
    engine.on("build", Script(files={"dist/app.bin": os.urandom(1 << 20)}, delay=0.5))
    try:
        async with open_runtime(dataclasses.replace(fake_settings, storage=storage), S3_KEYS, engine=engine) as rt:
            submitted = await rt.control.submit_pipeline(JobSpec(repo=str(repo), ref="main"))
            while not engine.execs:  # the build step runs: the store goes
                await asyncio.sleep(0.02)
            await asyncio.to_thread(server.stop)
            started = time.monotonic()
            jobs = by_display(await finished(rt, submitted.pipeline_id, timeout=60))
            took = time.monotonic() - started
            build_log, publish_log = log_of(rt, jobs["build"]), log_of(rt, jobs["publish"])
    finally:
        server.stop()
    assert jobs["build"].state is JobState.success, build_log
    assert "artifacts: warning: not kept (" in build_log
    publish = jobs["publish"]
    assert publish.state is JobState.failure and publish.attempts == 1, publish_log
    assert publish.error is not None and publish.error.startswith(
        "the artifacts of job build (dist/*.bin, reports/**) were not kept: the upload failed: ")
    assert engine.runs(publish.id) == [] and took < 45


async def test_forgeci_run_passes_artifacts_through_its_scratch_folder_and_keeps_the_last_runs(
        fake_settings: Settings, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": BUILD_PUBLISH})
    blob = os.urandom(3_000_000)
    engine = SeeingEngine({"publish": "dist/app.bin"})
    engine.on("build", Script(files={"dist/app.bin": blob}))
    out = io.StringIO()
    result = await run_local(fake_settings, repo, environ={}, out=out, engine=engine)
    assert result.succeeded, out.getvalue()
    assert engine.seen["publish"] == hashlib.sha256(blob).hexdigest()
    assert not (repo / "dist").exists()  # never through the working tree: the next run would copy it
    kept = fake_settings.data_dir / "last-run-artifacts"
    assert result.artifacts == kept and f"artifacts of this run: {kept}\n" in out.getvalue()
    assert (kept / "build" / "dist" / "app.bin").read_bytes() == blob
    assert [p.name for p in fake_settings.data_dir.iterdir()] == ["last-run-artifacts"]  # the scratch dir went
    engine.on("build", Script())  # the next run keeps nothing: the folder is the last run's, so it goes
    again = await run_local(fake_settings, repo, environ={}, out=io.StringIO(), engine=engine)
    assert again.artifacts is None and not kept.exists()


async def test_retrying_the_failed_jobs_reuses_the_artifacts_of_the_jobs_that_succeeded(
        fake_settings: Settings, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": BUILD_PUBLISH})
    blob = os.urandom(100_000)
    engine = SeeingEngine({"publish": "dist/app.bin"})
    engine.on("build", Script(files={"dist/app.bin": blob}))
    engine.on("publish", Script(exit_code=1), Script())
    async with open_runtime(fake_settings, {}, engine=engine) as rt:
        submitted = await rt.control.submit_pipeline(JobSpec(repo=str(repo), ref="main"))
        first = by_display(await finished(rt, submitted.pipeline_id))
        assert first["publish"].state is JobState.failure
        engine.seen.clear()
        await rt.control.retry_pipeline(submitted.pipeline_id, failed_only=True)
        again = by_display(await finished(rt, submitted.pipeline_id))
    assert again["publish"].state is JobState.success and engine.runs(again["build"].id) == ["build"]  # ran once
    assert engine.seen["publish"] == hashlib.sha256(blob).hexdigest()
