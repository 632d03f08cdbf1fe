"""Pickup latency (enqueue -> first step running in its container), with one service and without, and per-step
cost, next to bare podman."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/ heads sys.path when run as a script, and bench/queue.py would shadow the stdlib's queue module.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from config.settings import Settings  # noqa: E402
from runner.images import BUSYBOX_IMAGE, build_busybox_image  # noqa: E402
from runner.logs import read_log  # noqa: E402
from runner.models import JobSpec  # noqa: E402
from runner.podman_user import PodmanUser  # noqa: E402
from runner.runtime import Runtime, open_runtime  # noqa: E402

IMAGE = "localhost/forgeci-job:latest"
ROUNDS = 20
STEPS = 20


def git(path: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b"}
    return subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def make_repo(root: Path, name: str, pipeline: str) -> tuple[Path, str]:
    path = root / name
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / ".forgeci.toml").write_text(pipeline)
    git(path, "add", "-A")
    git(path, "commit", "-qm", "bench")
    for sub in [path, *path.rglob("*")]:
        sub.chmod(sub.stat().st_mode | 0o055)
    return path, git(path, "rev-parse", "HEAD")


def bare_podman(user: PodmanUser, argv: list[str], rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        user.run(argv)
        times.append(time.perf_counter() - t0)
    return times


async def wait_done(rt: Runtime, job_id: int) -> None:
    while not rt.queue.get(job_id).state.is_terminal:
        await asyncio.sleep(0.01)


async def one_pickup(rt: Runtime, repo: Path, sha: str) -> float:
    """Seconds from enqueue to the first step's command running (it prints the time)."""
    t0 = time.time()
    job_id = rt.queue.enqueue(JobSpec(repo=str(repo), ref="main", sha=sha))
    assert rt.pool is not None
    rt.pool.wake()
    await wait_done(rt, job_id)
    job = rt.queue.get(job_id)
    assert job.state == "success", job
    started = next(float(m.group(1)) for line in read_log(rt.layout.log_file(job_id))
                   if (m := re.fullmatch(r"START (\d+\.\d+)", line.text)))
    return started - t0


async def pickup(rt: Runtime, repo: Path, sha: str) -> list[float]:
    latencies = [await one_pickup(rt, repo, sha) for _ in range(ROUNDS + 1)]
    return latencies[1:]  # the first round warms the mirror


async def pickup_with_service(rt: Runtime, plain: tuple[Path, str], service: tuple[Path, str]
                              ) -> tuple[list[float], list[float]]:
    """Pickup without and with one service, alternating (this machine is shared: drift hits both alike)."""
    without, with_one = [], []
    await one_pickup(rt, *service)  # warms its mirror and the pod's infra image
    for _ in range(ROUNDS):
        without.append(await one_pickup(rt, *plain))
        with_one.append(await one_pickup(rt, *service))
    return without, with_one


async def per_step(rt: Runtime, repo: Path, sha: str) -> float:
    job_id = rt.queue.enqueue(JobSpec(repo=str(repo), ref="main", sha=sha))
    assert rt.pool is not None
    rt.pool.wake()
    await wait_done(rt, job_id)
    job = rt.queue.get(job_id)
    assert job.state == "success", job
    starts = [s.started_at for s in job.steps]
    ends = [s.finished_at for s in job.steps]
    assert all(starts) and all(ends)
    return (ends[-1] - starts[0]) / len(job.steps)  # type: ignore[operator]


async def container_starts(rt: Runtime, rounds: int) -> list[float]:
    """Seconds of the engine's create + start of a job container (what the warm pool takes off the pickup)."""
    times = []
    for i in range(rounds):
        folder = rt.layout.workspaces / f"bench-{i}"
        folder.mkdir()
        rt.user.chown(folder)
        spec = await rt.executor.container_spec(900000 + i, IMAGE, folder)
        t0 = time.perf_counter()
        container = await rt.engine.start_job_container(spec)
        times.append(time.perf_counter() - t0)
        await rt.engine.remove(container)
        await rt.engine.remove_tree(folder)
    return times


async def warm_pickups(settings: Settings, repo: Path, sha: str
                       ) -> tuple[list[float], list[float], list[float], int]:
    """Pickups with `warm_pool = 2` and without, alternating between two runtimes open side by side (each job
    arriving once the pool is full again); the container start measured in the same run; how many of the pool
    runtime's jobs the pool served."""
    plain_settings = dataclasses.replace(settings, data_dir=settings.data_dir.with_name("data-plain"))
    async with open_runtime(with_pool(settings, 2), {}) as rt, open_runtime(plain_settings, {}) as plain:
        pool = rt.executor.warm
        assert pool is not None
        starts = await container_starts(rt, ROUNDS)
        await one_pickup(rt, repo, sha)  # warm the mirrors
        await one_pickup(plain, repo, sha)
        warm, cold = [], []
        for _ in range(ROUNDS):
            while pool.ready < 2:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)  # the pool's last start has settled
            warm.append(await one_pickup(rt, repo, sha))
            await asyncio.sleep(0.3)
            cold.append(await one_pickup(plain, repo, sha))
        return warm, cold, starts, pool.served - 1


def with_pool(settings: Settings, size: int) -> Settings:
    return dataclasses.replace(settings, runner=dataclasses.replace(settings.runner, warm_pool=size))


async def main() -> None:
    global ROUNDS
    if "--rounds" in sys.argv:
        ROUNDS = int(sys.argv[sys.argv.index("--rounds") + 1])
    user = PodmanUser.resolve("forgeci")
    root = Path(tempfile.mkdtemp(prefix="forgeci-bench-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        base = Settings.default()  # the pool is off unless warm_pickups turns it on
        settings = dataclasses.replace(base, data_dir=root / "data",
                                       runner=dataclasses.replace(base.runner, image=IMAGE, network="none"))
        go = '[[steps]]\nname = "go"\nrun = "echo START $(date +%s.%N)"\n'
        one, one_sha = make_repo(root, "one", go)
        build_busybox_image(user)
        # Busybox-like, no exposed ports, no `ready`: what the pod itself costs, plus the settle time.
        svc = make_repo(root, "svc", f'[services.idle]\nimage = "{BUSYBOX_IMAGE}"\ncommand = ["sleep", "600"]\n' + go)
        many, many_sha = make_repo(root, "many", "".join(f'[[steps]]\nname = "s{i}"\nrun = "true"\n'
                                                         for i in range(STEPS)))
        bare_run = bare_podman(user, ["podman", "run", "--rm", IMAGE, "true"], 5 + ROUNDS)[5:]
        container = user.run(["podman", "run", "-d", "--init", IMAGE, "sleep", "600"]).stdout.decode().strip()
        try:
            bare_exec = bare_podman(user, ["podman", "exec", container, "true"], 5 + ROUNDS)[5:]
        finally:
            user.run(["podman", "rm", "-f", container])
        async with open_runtime(settings, {}) as rt:
            latencies = await pickup(rt, one, one_sha)
            cold_starts = await container_starts(rt, ROUNDS)
            plain_ms, service_ms = (statistics.median(x) * 1000
                                    for x in await pickup_with_service(rt, (one, one_sha), svc))
            await per_step(rt, many, many_sha)  # warm
            step_cost = statistics.median([await per_step(rt, many, many_sha) for _ in range(3)])
        warm, cold, warm_starts, served = await warm_pickups(settings, one, one_sha)
        run_ms, pick_ms = statistics.median(bare_run) * 1000, statistics.median(latencies) * 1000
        exec_ms, step_ms = statistics.median(bare_exec) * 1000, step_cost * 1000
        print(f"{'measure':<44} {'forgeci':>10} {'baseline':>10} {'result':>14}")
        print(f"{'pickup: enqueue -> first step (median)':<44} {pick_ms:>8.0f}ms {run_ms:>8.0f}ms "
              f"{pick_ms - run_ms:>+11.0f}ms  (goal <= +150ms; baseline: podman run --rm {IMAGE} true)")
        print(f"{'pickup with one service (median)':<44} {service_ms:>8.0f}ms {plain_ms:>8.0f}ms "
              f"{service_ms - plain_ms:>+11.0f}ms  (goal <= +500ms; baseline: the same job without it, alternating)")
        print(f"{'per step, 20 x true (median of 3 jobs)':<44} {step_ms:>8.0f}ms {exec_ms:>8.0f}ms "
              f"{step_ms / exec_ms:>12.2f}x  (goal <= 1.5x; baseline: podman exec CTR true)")
        warm_ms, start_ms = statistics.median(warm) * 1000, statistics.median(cold_starts + warm_starts) * 1000
        without_ms = statistics.median(cold) * 1000
        saved = without_ms - warm_ms
        print(f"{'pickup with warm_pool = 2 (median of ' + str(ROUNDS) + ')':<44} {warm_ms:>8.0f}ms "
              f"{without_ms:>8.0f}ms {-saved:>+11.0f}ms  (goal: saves >= the container start, {start_ms:.0f}ms "
              f"measured: {'met' if saved >= start_ms else 'MISSED'}; {served}/{ROUNDS} jobs served by the pool; "
              f"baseline: the same job without the pool, alternating)")
        print(f"pickup p90 {statistics.quantiles(latencies, n=10)[-1] * 1000:.0f}ms, "
              f"min {min(latencies) * 1000:.0f}ms, max {max(latencies) * 1000:.0f}ms")
    finally:
        if os.geteuid() != 0:
            user.run(["podman", "unshare", "rm", "-rf", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
