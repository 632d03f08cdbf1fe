"""`forgeci artifacts JOB [--download DIR [PATH...]]` against a live server running jobs on the fake engine."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.artifacts import ArtifactFileInfo, selected, target_of
from client.errors import BadResponse
from config.settings import Settings
from forgeci_cli import main
from runner.models import JobSpec
from tests.bot.api_helpers import LiveServer, live_server
from tests.conftest import repo_maker
from tests.fake_engine import FakeEngine, Script
from tests.runner.test_pipelines import by_display, finished

PIPELINE = '''
[jobs.build]
artifacts = { paths = ["dist/**", "coverage.xml"] }
steps = [{ run = "build" }]
[jobs.lint]
steps = [{ run = "lint" }]
'''
BLOB = os.urandom(3_000_000)


@pytest.fixture
def server(fake_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LiveServer, dict[str, int]]]:
    monkeypatch.delenv("FORGECI_API_TOKEN", raising=False)
    repo, _ = repo_maker(tmp_path, shared=False)({".forgeci.toml": PIPELINE})
    engine = FakeEngine()
    engine.on("build", Script(files={"dist/app.bin": BLOB, "dist/sub/notes.txt": "notes", "coverage.xml": "<c/>"}))
    with live_server(fake_settings, workers=True, engine=engine) as live:
        async def run() -> dict[str, int]:
            submitted = await live.runtime.control.submit_pipeline(JobSpec(repo=str(repo), ref="main"))
            jobs = by_display(await finished(live.runtime, submitted.pipeline_id))
            return {name: job.id for name, job in jobs.items()}

        yield live, live.call(run)


def test_it_lists_a_jobs_files(server: tuple[LiveServer, dict[str, int]], capsys: pytest.CaptureFixture[str]) -> None:
    live, ids = server
    assert main(["artifacts", str(ids["build"]), "--server", live.url]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"job {ids['build']} (build): 3 files, 3.0 MB")
    assert "  dist/app.bin " in out and hashlib.sha256(BLOB).hexdigest()[:16] in out and "all of it: http" in out
    assert re.search(r"as a zip:  http://\S+/archive\.zip\?expires=", out)
    assert main(["artifacts", str(ids["lint"]), "--server", live.url]) == 0
    assert capsys.readouterr().out == f"job {ids['lint']} has no artifacts\n"
    assert main(["artifacts", "999", "--server", live.url]) == 2


def test_it_downloads_and_verifies_all_or_some(server: tuple[LiveServer, dict[str, int]], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    live, ids = server
    every = tmp_path / "all"
    assert main(["artifacts", str(ids["build"]), "--download", str(every), "--server", live.url]) == 0
    assert "downloaded 3 files (3.0 MB) into" in capsys.readouterr().out and "sha256 verified"
    assert (every / "dist" / "app.bin").read_bytes() == BLOB and (every / "coverage.xml").read_text() == "<c/>"
    some = tmp_path / "some"
    assert main(["artifacts", str(ids["build"]), "--download", str(some), "dist/sub", "*.xml",
                 "--server", live.url]) == 0
    assert sorted(str(p.relative_to(some)) for p in some.rglob("*") if p.is_file()) == [
        "coverage.xml", "dist/sub/notes.txt"]
    assert main(["artifacts", str(ids["build"]), "--download", str(some), "nope.txt", "--server", live.url]) == 2
    assert "no file 'nope.txt'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # a PATH needs --download
        main(["artifacts", str(ids["build"]), "dist/app.bin", "--server", live.url])
    assert usage.value.code == 2


def test_a_file_that_does_not_match_its_sha256_fails_and_is_not_kept(server: tuple[LiveServer, dict[str, int]],
                                                                     tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    live, ids = server

    async def forge() -> None:
        def update() -> None:
            with live.runtime.queue._transaction() as conn:
                conn.execute("UPDATE artifact_files SET sha256 = ? WHERE path = 'dist/app.bin'", ("0" * 64,))
        await asyncio.to_thread(update)

    live.call(forge)
    target = tmp_path / "out"
    assert main(["artifacts", str(ids["build"]), "--download", str(target), "--server", live.url]) == 1
    err = capsys.readouterr().err
    assert "dist/app.bin: got 3000000 bytes with sha256 " in err and "expected 3000000 bytes with 0000000000000000" in err
    assert not (target / "dist" / "app.bin").exists() and (target / "coverage.xml").exists()
    assert not [p for p in target.rglob(".forgeci-*")]


def test_paths_from_the_server_never_leave_the_folder(tmp_path: Path) -> None:
    assert target_of(tmp_path, "a/b.txt") == tmp_path / "a" / "b.txt"
    for bad in ("../x", "/etc/passwd", "a/../../x", "", "a//b"):
        with pytest.raises(BadResponse):
            target_of(tmp_path, bad)
    files = [ArtifactFileInfo(p, 1, "0" * 64, None) for p in ("dist/a.whl", "dist/sub/b", "c.xml")]
    assert [f.path for f in selected(files, ["dist"])[0]] == ["dist/a.whl", "dist/sub/b"]
    assert selected(files, ["*.xml", "x"]) == ([files[2]], ["x"])
