"""The warm pool (`runner.warm_pool`): started containers of the default image, one job each, isolated, no leak."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from config.settings import Settings
from runner.models import JobState
from runner.podman_user import PodmanUser
from runner.runtime import open_runtime
from tests.conftest import with_runner
from tests.runner.test_executor import log_text, pipeline, submit, wait_terminal

pytestmark = [pytest.mark.slow, pytest.mark.podman]

MakeRepo = Callable[..., tuple[Path, str]]


def containers(user: PodmanUser, data_dir: Path) -> list[str]:
    listed = user.run(["podman", "ps", "-aq", "--filter", f"label=forgeci.instance={data_dir}"], check=False)
    return listed.stdout.decode().split()


async def wait_ready(pool: object, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while getattr(pool, "ready") < count:
        assert time.monotonic() < deadline, "the warm pool did not fill"
        await asyncio.sleep(0.05)


async def test_pool_jobs_are_isolated_from_each_other_and_nothing_is_left(
    settings: Settings, make_repo: MakeRepo, podman_user: PodmanUser
) -> None:
    writer, _ = make_repo({".forgeci.toml": pipeline(
        "echo secret > /tmp/left-by-a; echo secret > /workspace/left-by-a; mkdir -p /workspace/sub; "
        "echo x > /workspace/sub/f; cat /workspace/.forgeci.toml > /dev/null; echo wrote")})
    reader, _ = make_repo({".forgeci.toml": pipeline(
        "test -f /workspace/.forgeci.toml; test ! -e /tmp/left-by-a; test ! -e /workspace/left-by-a; "
        "test ! -e /workspace/sub; echo clean")})
    other_image, _ = make_repo({".forgeci.toml": 'image = "localhost/forgeci-job:latest"\n' + pipeline("true")})
    async with open_runtime(with_runner(settings, warm_pool=2), {}) as rt:
        pool = rt.executor.warm
        assert pool is not None
        await wait_ready(pool, 2)
        ready = set(containers(podman_user, settings.data_dir))
        assert len(ready) == 2
        ids = []
        for repo in (writer, reader, writer, reader):
            await wait_ready(pool, 1)  # a taken slot's replacement starts a second later (REFILL_DELAY)
            job = await wait_terminal(rt, submit(rt, repo), 120)
            assert job.state is JobState.success, log_text(rt, job.id)
            ids.append(job.id)
        assert "clean" in log_text(rt, ids[1]) and "clean" in log_text(rt, ids[3])
        used = [line.split()[1] for i in ids for line in log_text(rt, i).splitlines() if line.startswith("container ")]
        assert len(set(used)) == 4  # one container per job, never reused
        assert any(u in c for u in used for c in ready)  # the pool's containers served them
        assert pool.served == 4
        other = await wait_terminal(rt, submit(rt, other_image), 120)  # another image: the normal path
        assert pool.served == 4 and other.state in (JobState.success, JobState.failure)
        await wait_ready(pool, 2)
        workspaces = settings.data_dir / "workspaces"
        assert sorted(p.name.startswith("pool-") for p in workspaces.iterdir()) == [True, True]
    assert containers(podman_user, settings.data_dir) == []
    assert list((settings.data_dir / "workspaces").iterdir()) == []


async def test_a_crashed_servers_pool_is_removed_at_the_next_start(
    settings: Settings, make_repo: MakeRepo, podman_user: PodmanUser
) -> None:
    """What a kill -9 leaves (the pool's started containers and their folders) goes at the next start."""
    from runner.warm_pool import POOL_JOB_ID

    warm = with_runner(settings, warm_pool=2)
    async with open_runtime(warm, {}, workers=False) as rt:
        workspaces = rt.layout.workspaces
        for _ in range(2):  # as a crashed server's pool leaves them: started, labelled job 0, with their folders
            folder = workspaces / f"pool-crashed{_}"
            folder.mkdir()
            podman_user.chown(folder)
            await rt.engine.start_job_container(await rt.executor.container_spec(POOL_JOB_ID, warm.runner.image,
                                                                                 folder))
        crashed = set(containers(podman_user, settings.data_dir))
        assert len(crashed) == 2
    async with open_runtime(warm, {}) as rt:
        assert rt.executor.warm is not None
        await wait_ready(rt.executor.warm, 2)
        now = set(containers(podman_user, settings.data_dir))
        assert len(now) == 2 and not now & crashed
        assert not (rt.layout.workspaces / "pool-crashed0").exists()
    assert containers(podman_user, settings.data_dir) == []


async def test_a_waiting_container_that_dies_is_replaced(
    settings: Settings, podman_user: PodmanUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runner.warm_pool

    monkeypatch.setattr(runner.warm_pool, "CHECK_EVERY", 0.3)
    async with open_runtime(with_runner(settings, warm_pool=1), {}) as rt:
        pool = rt.executor.warm
        assert pool is not None
        await wait_ready(pool, 1)
        (dead,) = containers(podman_user, settings.data_dir)
        podman_user.run(["podman", "rm", "-f", "-t", "0", dead])
        deadline = time.monotonic() + 60
        while not ((now := containers(podman_user, settings.data_dir)) and dead not in now and pool.ready == 1):
            assert time.monotonic() < deadline, "the dead pool container was not replaced"
            await asyncio.sleep(0.1)
    assert containers(podman_user, settings.data_dir) == []
