"""The shared Podman service (one per Podman user, outliving a run) and `forgeci run --timings`."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from config.settings import Settings
from runner.podman import unified_cgroup
from runner.podman_shared import SharedPodmanService
from runner.podman_user import PodmanUser
from runner.runtime import open_runtime

pytestmark = [pytest.mark.slow, pytest.mark.podman]

MakeRepo = Callable[..., tuple[Path, str]]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def service_dir(shared_dir: Path, podman_user: PodmanUser) -> Iterator[Path]:
    """A service folder of this test's own: stopping its service disturbs nobody else's runs."""
    folder = shared_dir / "service"
    yield folder
    SharedPodmanService(podman_user, folder, 60).shutdown()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_concurrent_starts_make_one_service_that_outlives_its_users(podman_user: PodmanUser,
                                                                     service_dir: Path) -> None:
    services = [SharedPodmanService(podman_user, service_dir, 60) for _ in range(4)]
    errors: list[BaseException] = []

    def start(service: SharedPodmanService) -> None:
        try:
            service.start()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in services]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sum(s.started_it for s in services) == 1  # the lock: one of them started it, the others connected
    pid = int((service_dir / "service.pid").read_text())
    for service in services:
        service.stop()  # a user going away leaves it running
    assert alive(pid) and services[0].alive()
    again = SharedPodmanService(podman_user, service_dir, 60)
    again.start()
    assert not again.started_it and int((service_dir / "service.pid").read_text()) == pid
    assert again.ensure() is False and alive(pid)  # the watchdog never replaces a service that answers
    assert again.shutdown() and not again.alive()
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)


def test_the_idle_timeout_stops_the_service(podman_user: PodmanUser, service_dir: Path) -> None:
    service = SharedPodmanService(podman_user, service_dir, 2)
    service.start()
    pid = int((service_dir / "service.pid").read_text())
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(pid), "podman system service --time=2 should have stopped by itself"
    service.start()  # and the next user starts a new one
    assert service.started_it and service.alive()


async def test_runtimes_share_the_service_and_a_closed_one_leaves_it_to_the_others(
    settings: Settings, service_dir: Path, shared_dir: Path
) -> None:
    runner = dataclasses.replace(settings.runner, podman_service_dir=str(service_dir))
    first = dataclasses.replace(settings, runner=runner)
    second = dataclasses.replace(first, data_dir=shared_dir / "second")
    async with open_runtime(first, {}, workers=False) as one:
        async with open_runtime(second, {}, workers=False) as two:
            assert one.engine.url == two.engine.url  # type: ignore[attr-defined]
        assert await one.engine.ping()  # the other one's close did not stop it
        assert one.engine.service is not None and one.engine.service.alive()  # type: ignore[attr-defined]
    assert SharedPodmanService(settings_user(settings), service_dir, 60).alive()


def settings_user(settings: Settings) -> PodmanUser:
    return PodmanUser.resolve(settings.runner.podman_user)


def test_forgeci_run_prints_its_phases_and_leaves_nothing_behind(
    settings: Settings, make_repo: MakeRepo, service_dir: Path, podman_user: PodmanUser
) -> None:
    repo, _ = make_repo({".forgeci.toml": '[[steps]]\nname = "hello"\nrun = "echo hello > /tmp/x; echo hello"\n'})
    config = repo.parent / "forgeci.toml"
    config.write_text(f'data_dir = "{settings.data_dir}"\n[runner]\nimage = "{settings.runner.image}"\n'
                      f'network = "none"\npodman_service_dir = "{service_dir}"\n')
    for _ in range(2):  # cold, then warm
        result = subprocess.run([sys.executable, "-m", "forgeci_cli", "run", str(repo), "--timings"],
                                capture_output=True, text=True, cwd=ROOT, timeout=240,
                                env={"PATH": "/usr/local/bin:/usr/bin:/bin", "FORGECI_CONFIG": str(config)})
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        timings = out[out.index("timings"):]
        for phase in ("start-up", "imports", "settings", "podman service", "workspace", "image check",
                      "container create + start", "steps", "total"):
            assert f"  {phase}" in timings, timings
    assert "the shared Podman service was already running" in timings
    # The containers and the scratch data dir go after the summary, in a process of their own.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listing = podman_user.run(["podman", "ps", "-a", "--filter", "label=forgeci.job", "--format",
                                   '{{.ID}} {{index .Labels "forgeci.instance"}}'], check=False).stdout.decode()
        listed = [line for line in listing.splitlines() if f" {settings.data_dir}/" in line]  # run-* scratch dirs
        scratch = [p for p in settings.data_dir.iterdir() if p.name.startswith("run-")]
        if not listed and not scratch:
            break
        time.sleep(0.2)
    assert not listed and not scratch, (listed, scratch)


def test_cgroup_version_from_the_mount_table(tmp_path: Path) -> None:
    table = tmp_path / "mounts"
    table.write_text("tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n")
    assert unified_cgroup(str(table)) is False
    table.write_text("cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n")
    assert unified_cgroup(str(table)) is True
    assert unified_cgroup(str(tmp_path / "missing")) is False
