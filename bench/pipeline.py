"""What pipelines cost: the extra time of a job in a chain, and a matrix's parallel wall time, against baselines
measured in the same run (one job of the same steps; the same members as a sequential chain)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# bench/ heads sys.path when run as a script, and bench/queue.py would shadow the stdlib's queue module.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.pickup import make_repo  # noqa: E402
from config.settings import Settings  # noqa: E402
from runner.images import BUSYBOX_IMAGE, build_busybox_image  # noqa: E402
from runner.models import JobSpec  # noqa: E402
from runner.podman_user import PodmanUser  # noqa: E402
from runner.runtime import Runtime, open_runtime  # noqa: E402

ROUNDS = 5
ONE_JOB = 'snapshot = "never"\n' + "".join(f'[[steps]]\nname = "s{i}"\nrun = "true"\n' for i in range(3))


def chain(count: int, run: str, prefix: str) -> str:
    """`count` jobs, each needing the one before."""
    jobs = []
    for i in range(count):
        needs = f'needs = ["{prefix}{i - 1}"]\n' if i else ""
        jobs.append(f'[jobs.{prefix}{i}]\n{needs}steps = [{{ run = "{run}" }}]\n')
    return 'snapshot = "never"\n' + "".join(jobs)


CHAIN = chain(3, "true", "j")
MATRIX = ('snapshot = "never"\n[jobs.m]\nmatrix = { n = [1, 2, 3, 4] }\n'
          'steps = [{ run = "sleep 2" }]\n')
SEQUENTIAL = chain(4, "sleep 2", "m")


async def wall_time(rt: Runtime, repo: Path, sha: str) -> float:
    """Submit to the last job's end: what a user waits for."""
    started = time.monotonic()
    submitted = await rt.control.submit_pipeline(JobSpec(repo=str(repo), ref="main", sha=sha))
    while not rt.queue.pipeline(submitted.pipeline_id).state.is_terminal:
        await asyncio.sleep(0.01)
    record = rt.queue.pipeline(submitted.pipeline_id)
    assert record.state == "success", [rt.queue.get(j) for j in record.job_ids]
    return time.monotonic() - started


async def median_of(rt: Runtime, repo: Path, sha: str, rounds: int) -> float:
    await wall_time(rt, repo, sha)  # warm: the mirror, the image's bash probe
    return statistics.median([await wall_time(rt, repo, sha) for _ in range(rounds)])


async def main() -> None:
    user = PodmanUser.resolve("forgeci")
    build_busybox_image(user)
    root = Path(tempfile.mkdtemp(prefix="forgeci-bench-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        base = Settings.default()
        settings = dataclasses.replace(
            base, data_dir=root / "data", queue=dataclasses.replace(base.queue, max_concurrent=4),
            runner=dataclasses.replace(base.runner, image=BUSYBOX_IMAGE, network="none"))
        repos = {name: make_repo(root, name, text) for name, text in
                 (("one", ONE_JOB), ("chain", CHAIN), ("matrix", MATRIX), ("sequential", SEQUENTIAL))}
        async with open_runtime(settings, {}) as rt:
            one = await median_of(rt, *repos["one"], ROUNDS)
            chain = await median_of(rt, *repos["chain"], ROUNDS)
            matrix = await median_of(rt, *repos["matrix"], 3)
            sequential = await median_of(rt, *repos["sequential"], 3)
        extra = (chain - one) / 2 * 1000
        print(f"{'measure':<52} {'forgeci':>9} {'baseline':>9} {'result':>10}")
        print(f"{'3-job chain of true vs one job of 3 steps (median)':<52} {chain:>8.2f}s {one:>8.2f}s "
              f"{extra:>+8.0f}ms per extra job  (goal <= +500ms)")
        print(f"{'4-member matrix of sleep 2 vs a 4-job chain':<52} {matrix:>8.2f}s {sequential:>8.2f}s "
              f"{matrix / sequential:>9.2f}x  (goal <= 0.4x; max_concurrent = 4)")
    finally:
        if os.geteuid() != 0:
            user.run(["podman", "unshare", "rm", "-rf", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
