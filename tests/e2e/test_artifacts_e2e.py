"""Artifacts for real: rootless Podman and the busybox image, through `forgeci run` (the real CLI) and through the
server's runtime on both stores (the file store, and moto's S3 server over HTTP), downloaded through a signed link."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from config.settings import Settings, StorageSettings
from runner.models import JobSpec, JobState
from tests.bot.api_helpers import api_client, podman_engine, runtime_of
from tests.runner.test_pipelines import by_display, finished
from tests.runner.test_store import MotoServer, moto_server

__all__ = ["moto_server"]

pytestmark = [pytest.mark.slow, pytest.mark.podman]

MakeRepo = Callable[..., tuple[Path, str]]
ROOT = Path(__file__).resolve().parents[2]
# The build job leaves a 3 MB random file, its checksum, and two links that lead out of the workspace; the publish
# job checks the file byte for byte with busybox's sha256sum, and that neither link came along.
PIPELINE = '''
snapshot = "never"
[jobs.build]
artifacts = { paths = ["dist/**"] }
[[jobs.build.steps]]
name = "build"
run = """
mkdir -p dist && head -c 3000000 /dev/urandom > dist/blob.bin && sha256sum dist/blob.bin > dist/blob.sha256
ln -s /etc/passwd dist/passwd && ln -s ../../../.. dist/up && cat dist/blob.sha256
"""
[jobs.publish]
needs = ["build"]
[[jobs.publish.steps]]
name = "check"
run = "sha256sum -c dist/blob.sha256 && test ! -e dist/passwd && test ! -e dist/up && echo artifacts verified"
'''


def forgeci_run(settings: Settings, repo: Path) -> subprocess.CompletedProcess[str]:
    config = repo.parent / "forgeci.toml"
    config.write_text(f'data_dir = "{settings.data_dir}"\n[runner]\nimage = "{settings.runner.image}"\n'
                      f'network = "none"\n')
    return subprocess.run([sys.executable, "-m", "forgeci_cli", "run", str(repo)], capture_output=True, text=True,
                          cwd=ROOT, timeout=240, env={"PATH": "/usr/local/bin:/usr/bin:/bin", "FORGECI_CONFIG": str(config)})


def test_forgeci_run_hands_a_3mb_file_to_the_dependant(settings: Settings, make_repo: MakeRepo) -> None:
    repo, _ = make_repo({".forgeci.toml": PIPELINE})
    result = forgeci_run(settings, repo)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    checksum = re.search(r"\[build\] \[build\] ([0-9a-f]{64})  dist/blob.bin", out)
    assert checksum is not None, out
    assert "[publish] [check] dist/blob.bin: OK" in out and "artifacts verified" in out
    assert "artifacts: left out dist/passwd: a symbolic link to /etc/passwd, outside the workspace" in out
    assert "artifacts: left out dist/up: a symbolic link to ../../../.., outside the workspace" in out
    kept = settings.data_dir / "last-run-artifacts"
    assert f"artifacts of this run: {kept}" in out
    assert hashlib.sha256((kept / "build" / "dist" / "blob.bin").read_bytes()).hexdigest() == checksum[1]
    assert not (repo / "dist").exists()


@pytest.fixture(params=["file", "s3"])
def store_settings(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Settings]:
    if request.param == "file":
        yield settings
        return
    server: MotoServer = request.getfixturevalue("moto_server")
    yield dataclasses.replace(settings, storage=StorageSettings(
        url=server.url(f"e2e{time.monotonic_ns() % 10**9}"), access_key_env="AK", secret_key_env="SK"))


async def test_the_server_hands_it_on_and_a_signed_link_downloads_it(store_settings: Settings,
                                                                     make_repo: MakeRepo) -> None:
    repo, _ = make_repo({".forgeci.toml": PIPELINE})
    environ = {"AK": "test-key", "SK": "test-secret"}
    async with api_client(store_settings, environ, workers=True, engine=podman_engine(store_settings)) as client:
        rt = runtime_of(client)
        submitted = await rt.control.submit_pipeline(JobSpec(repo=str(repo), ref="main"))
        jobs = by_display(await finished(rt, submitted.pipeline_id, timeout=180))
        logs = {name: rt.layout.log_file(job.id).read_text() for name, job in jobs.items()}
        assert jobs["build"].state is JobState.success, logs["build"]
        assert jobs["publish"].state is JobState.success, logs["publish"]
        assert "dist/blob.bin: OK" in logs["publish"] and "artifacts verified" in logs["publish"]
        listing = await (await client.get(f"/artifacts?job={jobs['build'].id}")).json()
        files = {f["path"]: f for f in listing["artifacts"][0]["files"]}
        assert sorted(files) == ["dist/blob.bin", "dist/blob.sha256"]
        link = urlsplit(files["dist/blob.bin"]["url"])
        response = await client.get(f"{link.path}?{link.query}")
        body = await response.read()
    assert response.status == 200 and len(body) == 3_000_000
    assert hashlib.sha256(body).hexdigest() == files["dist/blob.bin"]["sha256"]
    assert files["dist/blob.bin"]["sha256"] in logs["build"]  # what sha256sum said inside the container
