"""Shared fixtures: real rootless Podman, data dirs the Podman user can reach, small git repositories."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from config.settings import RunnerSettings, Settings
from runner.images import BUSYBOX_IMAGE, build_busybox_image, image_exists
from runner.podman_user import PodmanUser
from runner.runtime import Runtime, open_runtime
from tests.fake_engine import FAKE_IMAGE, FakeEngine
from tests.postgres import own_pg_cluster, pg_cluster, pg_url  # noqa: F401 - PostgreSQL fixtures

# Fixture projects (forgeci init's starters) carry their own tests: they are data here, not this suite.
collect_ignore_glob = ["fixtures/*"]

JOB_IMAGE = "localhost/forgeci-job:latest"
POSTGRES_IMAGE = "localhost/forgeci-postgres:15"
REDIS_IMAGE = "localhost/forgeci-redis:7"
SETUP_HINT = "run scripts/setup (or `make test`, which runs it) to install Podman and create the forgeci user"
SERVICE_IMAGES_HINT = "run FORGECI_SERVICE_IMAGES=1 scripts/setup (CI's .ci/run sets it) to build the service images"
# Set by `make test` for the part of the suite that must pass on a machine without Podman (tests/bot): a test
# there that reaches for Podman fails, naming it, instead of quietly using the machine's.
NO_PODMAN = "FORGECI_TESTS_NO_PODMAN"


@pytest.fixture(scope="session")
def podman_user() -> PodmanUser:
    """The rootless Podman account; fails (never skips) when the set-up is missing."""
    if os.environ.get(NO_PODMAN):
        pytest.fail(f"this test needs Podman, which {NO_PODMAN} hides: it belongs outside tests/bot "
                    f"(tests/e2e), or on the fake engine")
    if not shutil.which("podman"):
        pytest.fail(f"podman is not installed: {SETUP_HINT}")
    try:
        user = PodmanUser.resolve("forgeci")
    except Exception as exc:
        pytest.fail(f"{exc}: {SETUP_HINT}")
    return user


# The folders this session's tests made: the leftover check looks only at those, so test runs of other
# sessions on the same machine (sharing the Podman user) cannot make it fail.
SESSION_DIRS: list[str] = []


def leftovers(user: PodmanUser) -> list[str]:
    """Job containers, pods and Podman services of this session's tests that are still there."""
    listing = user.run(["podman", "ps", "-a", "--filter", "label=forgeci.job", "--format",
                        '{{.ID}} {{index .Labels "forgeci.instance"}}'], check=False).stdout.decode()
    found = [f"container {line}" for line in listing.splitlines()
             if any(f" {d}/" in line for d in SESSION_DIRS)]
    pods = user.run(["podman", "pod", "ps", "--filter", "label=forgeci.job", "--format",
                     '{{.ID}} {{index .Labels "forgeci.instance"}}'], check=False).stdout.decode()
    found += [f"pod {line}" for line in pods.splitlines() if any(f" {d}/" in line for d in SESSION_DIRS)]
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "system service" in cmdline and "runuser" not in cmdline and any(d in cmdline for d in SESSION_DIRS):
            found.append(f"podman service pid {proc.name}: {cmdline.strip()}")
    return found


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """After the whole session: no job container and no Podman service of a test is left running."""
    yield
    if not SESSION_DIRS:
        return
    remaining = leftovers(PodmanUser.resolve("forgeci"))
    if remaining:
        pytest.fail("left behind by the tests:\n" + "\n".join(remaining))


@pytest.fixture(scope="session")
def busybox_image(podman_user: PodmanUser) -> str:
    """A 2 MB image for fast tests, built from the host's static busybox on first use."""
    if not shutil.which("busybox"):
        pytest.fail(f"busybox is not installed: {SETUP_HINT}")
    build_busybox_image(podman_user)
    return BUSYBOX_IMAGE


@pytest.fixture(scope="session")
def job_image(podman_user: PodmanUser) -> str:
    if not image_exists(podman_user, JOB_IMAGE):
        pytest.fail(f"the job image {JOB_IMAGE} is missing for user {podman_user.name}: {SETUP_HINT}")
    return JOB_IMAGE


@pytest.fixture(scope="session")
def postgres_image(podman_user: PodmanUser) -> str:
    """The PostgreSQL service image (images/postgres); fails, never skips, naming the set-up step."""
    if not image_exists(podman_user, POSTGRES_IMAGE):
        pytest.fail(f"the service image {POSTGRES_IMAGE} is missing for user {podman_user.name}: "
                    f"{SERVICE_IMAGES_HINT}")
    return POSTGRES_IMAGE


@pytest.fixture(scope="session")
def redis_image(podman_user: PodmanUser) -> str:
    """The Redis service image (images/redis); fails, never skips, naming the set-up step."""
    if not image_exists(podman_user, REDIS_IMAGE):
        pytest.fail(f"the service image {REDIS_IMAGE} is missing for user {podman_user.name}: {SERVICE_IMAGES_HINT}")
    return REDIS_IMAGE


def remove_tree(path: Path, user: PodmanUser) -> None:
    """Delete a test folder, including files a container wrote under subordinate uids."""
    if not path.exists():
        return
    if os.geteuid() != 0:
        user.run(["podman", "unshare", "rm", "-rf", str(path)], check=False)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shared_dir(podman_user: PodmanUser) -> Iterator[Path]:
    """A temp folder the Podman user can traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="forgeci-test-", dir="/var/tmp"))
    path.chmod(0o755)
    SESSION_DIRS.append(str(path))
    yield path
    remove_tree(path, podman_user)


@pytest.fixture
def settings(shared_dir: Path, busybox_image: str) -> Settings:
    """Defaults with a private data dir, the busybox image and no network: fast and hermetic."""
    base = Settings.default()
    runner = dataclasses.replace(base.runner, image=busybox_image, network="none", step_timeout=60.0,
                                 job_timeout=300.0)
    return dataclasses.replace(base, data_dir=shared_dir / "data", runner=runner)


@pytest.fixture
def fake_engine() -> FakeEngine:
    """The in-process engine (tests/fake_engine.py): program its steps, then run jobs without Podman."""
    return FakeEngine()


@pytest.fixture
def fake_settings(tmp_path: Path) -> Settings:
    """Defaults with a private data dir and the fake engine's image; no Podman user is involved, so the
    data dir may be private to us (git and every file operation run as this process's user)."""
    base = Settings.default()
    runner = dataclasses.replace(base.runner, image=FAKE_IMAGE, network="none", step_timeout=60.0,
                                 job_timeout=300.0, ca_bundle="")
    return dataclasses.replace(base, data_dir=tmp_path / "data", runner=runner)


@pytest.fixture
async def fake_runtime(fake_settings: Settings, fake_engine: FakeEngine) -> AsyncIterator[Runtime]:
    async with open_runtime(fake_settings, {}, workers=True, engine=fake_engine) as rt:
        yield rt


def with_runner(settings: Settings, **changes: object) -> Settings:
    runner: RunnerSettings = dataclasses.replace(settings.runner, **changes)  # type: ignore[arg-type]
    return dataclasses.replace(settings, runner=runner)


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with open_runtime(settings, {}, workers=True) as rt:
        yield rt


def git(path: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e"}
    return subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def repo_maker(base: Path, *, shared: bool) -> Callable[..., tuple[Path, str]]:
    """make(files) -> (path, sha): a git repository under `base` on branch main with one commit of `files`;
    `shared`: readable by the Podman user too."""
    counter = iter(range(1000))

    def make(files: dict[str, str], name: str | None = None) -> tuple[Path, str]:
        path = base / (name or f"repo{next(counter)}")
        path.mkdir()
        git(path, "init", "-q", "-b", "main")
        for rel, text in files.items():
            target = path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        git(path, "add", "-A")
        git(path, "commit", "-qm", "initial")
        if shared:
            for sub in [path, *path.rglob("*")]:
                sub.chmod(sub.stat().st_mode | 0o055)
        return path, git(path, "rev-parse", "HEAD")

    return make


@pytest.fixture
def make_repo(shared_dir: Path) -> Callable[..., tuple[Path, str]]:
    """make_repo(files) -> (path, sha), readable by the Podman user."""
    return repo_maker(shared_dir, shared=True)


@pytest.fixture
def make_local_repo(tmp_path: Path) -> Callable[..., tuple[Path, str]]:
    """make_local_repo(files) -> (path, sha) for the fake engine (git runs as us)."""
    return repo_maker(tmp_path, shared=False)
