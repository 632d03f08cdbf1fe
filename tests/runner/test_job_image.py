"""The default job image and real projects in it: toolchain, `forgeci run`, registries through the host CA."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from config.settings import Settings
from runner.local import run_local
from runner.models import JobState
from runner.podman_user import PodmanUser
from tests.conftest import with_runner

pytestmark = [pytest.mark.slow, pytest.mark.podman]

MakeRepo = Callable[..., tuple[Path, str]]


def test_the_job_image_is_in_the_podman_users_storage_with_the_seed_toolset(
    podman_user: PodmanUser, job_image: str
) -> None:
    images = podman_user.run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}"]).stdout.decode()
    assert job_image in images.split()
    result = podman_user.run(["podman", "run", "--rm", job_image, "bash", "-c",
                              "node --version; bun --version; python3 --version; git --version; zstd --version"])
    out = result.stdout.decode()
    assert out.splitlines()[0].startswith("v20."), out
    assert out.splitlines()[1].startswith("1."), out
    assert "Python 3.11" in out and "git version" in out and "Zstandard" in out


PROJECT = {
    ".forgeci.toml": """
[env]
GREETING = "hello"

[[steps]]
name = "install"
run = "python3 -m venv .venv && .venv/bin/python -c 'import sys; print(sys.version_info[:2])'"

[[steps]]
name = "test"
run = '''
node -e 'console.log(process.env.GREETING + " from node " + process.version)'
.venv/bin/python -m unittest -q test_add
'''
""",
    "add.py": "def add(a, b):\n    return a + b\n",
    "test_add.py": "import unittest\nfrom add import add\n\nclass T(unittest.TestCase):\n"
                   "    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n",
}


async def test_forgeci_run_end_to_end_in_the_job_image(settings: Settings, make_repo: MakeRepo,
                                                        job_image: str) -> None:
    repo, _ = make_repo(PROJECT)
    (repo / "add.py").write_text("def add(a, b):\n    return a + b  # uncommitted edit\n")
    out = io.StringIO()
    run = await run_local(with_runner(settings, image=job_image), repo, environ={}, out=out)
    text = out.getvalue()
    assert run.succeeded, text
    assert [r.name for r in run.jobs[0].steps] == ["install", "test"]
    assert "hello from node v20." in text
    assert "OK" in text or "Ran 1 test" in text
    # The summary table names each step with its result.
    assert "install" in text.split("step ")[-1] and "SUCCESS" in text
    assert not (repo / ".venv").exists()  # the job ran on a copy of the working tree


async def test_forgeci_run_one_step_and_failure_exit(settings: Settings, make_repo: MakeRepo, busybox_image: str) -> None:
    repo, _ = make_repo({".forgeci.toml": '[[steps]]\nname = "a"\nrun = "echo A"\n'
                                          '[[steps]]\nname = "b"\nrun = "echo B; exit 5"\n'})
    out = io.StringIO()
    run = await run_local(settings, repo, step="a", environ={}, out=out)
    assert run.jobs[0].state is JobState.success and [r.name for r in run.jobs[0].steps] == ["a"]
    cli = subprocess.run([sys.executable, "-m", "forgeci_cli", "run", str(repo)], capture_output=True, text=True,
                         env={"PATH": "/usr/local/bin:/usr/bin:/bin",
                              "FORGECI_CONFIG": str(write_settings(settings, repo.parent / "s.toml"))})
    assert cli.returncode == 1, cli.stderr
    assert "[b] B" in cli.stdout and "FAILURE" in cli.stdout


def write_settings(settings: Settings, path: Path) -> Path:
    path.write_text(f'data_dir = "{settings.data_dir}"\n[runner]\nimage = "{settings.runner.image}"\n'
                    f'network = "none"\n')
    return path


async def test_package_registries_work_inside_a_job_through_the_host_ca(
    settings: Settings, make_repo: MakeRepo, job_image: str
) -> None:
    if not settings.runner.ca_bundle:
        pytest.fail("no host CA bundle found; install ca-certificates (scripts/setup does)")
    repo, _ = make_repo({".forgeci.toml": '[[steps]]\nname = "fetch"\n'
                                          'run = "pip download --no-deps -q -d /tmp/dl six && ls /tmp/dl"\n'})
    networked = with_runner(settings, image=job_image, network="slirp4netns")
    out = io.StringIO()
    run = await run_local(networked, repo, environ={}, out=out)
    assert run.succeeded, out.getvalue()
    assert "six-" in out.getvalue()
