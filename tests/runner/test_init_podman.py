"""`forgeci init --run` on small fixture projects, and `forgeci run` as root in a checkout the forgeci user owns:
the real CLI on rootless Podman, without network (the fixtures need no registry)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from config.check import check_file
from config.settings import Settings
from tests.runner.test_local_checkout import chown_to_owner, gitconfig

pytestmark = [pytest.mark.slow, pytest.mark.podman]

MakeRepo = Callable[..., tuple[Path, str]]
ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "starter"


def fixture_files(name: str) -> dict[str, str]:
    folder = FIXTURES / name
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def forgeci(settings: Settings, image: str, *args: str) -> subprocess.CompletedProcess[str]:
    config = settings.data_dir.parent / "forgeci.toml"
    config.write_text(f'data_dir = "{settings.data_dir}"\n[runner]\nimage = "{image}"\nnetwork = "none"\n')
    return subprocess.run([sys.executable, "-m", "forgeci_cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=540, check=False,
                          env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(Path.home()),
                               "FORGECI_CONFIG": str(config)})


@pytest.mark.parametrize(("fixture", "passed"), [
    ("node-nolock", "[test] [test] fixture node test: 1 passed, 0 failed"),
    ("python-pyproject", "[test] [test] Ran 2 tests in "),
])
def test_init_run_writes_a_pipeline_and_it_passes_on_the_real_engine(
        settings: Settings, make_repo: MakeRepo, job_image: str, fixture: str, passed: str) -> None:
    repo, _ = make_repo(fixture_files(fixture))
    result = forgeci(settings, job_image, "init", "--run", str(repo))
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert out.startswith(f"wrote {repo}/.forgeci.toml\nrunning it once with `forgeci run {repo}`:\n"), out
    assert passed in out, out
    assert "SUCCESS in " in out and "[test] [install] " in out
    assert check_file(repo / ".forgeci.toml") == []
    assert not (repo / "node_modules").exists() and not (repo / ".venv").exists()  # it ran on a copy


def test_init_run_exits_1_when_the_tests_fail(settings: Settings, make_repo: MakeRepo, job_image: str) -> None:
    files = fixture_files("node-nolock")
    files["index.js"] = "exports.add = (a, b) => a - b;\n"
    repo, _ = make_repo(files)
    result = forgeci(settings, job_image, "init", "--run", str(repo))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "AssertionError" in result.stdout and "FAILURE in " in result.stdout
    assert (repo / ".forgeci.toml").is_file()  # written, for the user to fix and run again


def test_run_as_root_in_a_checkout_the_forgeci_user_owns(settings: Settings, make_repo: MakeRepo,
                                                         busybox_image: str) -> None:
    repo, sha = make_repo({".forgeci.toml": '[[steps]]\nname = "look"\nrun = "cat hello.txt; ls"\n',
                           "hello.txt": "hello from a checkout of forgeci's\n"})
    (repo / "untracked.txt").write_text("")
    chown_to_owner(repo)
    assert os.stat(repo).st_uid != os.geteuid()
    before = gitconfig()
    result = forgeci(settings, busybox_image, "run", str(repo))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{repo} main {sha}" in result.stdout
    assert "[look] hello from a checkout of forgeci's" in result.stdout and "untracked.txt" in result.stdout
    assert gitconfig() == before
