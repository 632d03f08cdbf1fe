"""What pipelines cost: the extra time of a job in a chain, a matrix's parallel wall time, and `GET /pipelines` over a
large history, against baselines measured in the same run (one job of the same steps; the same members as a
sequential chain; `GET /openapi.json`, a static document, on the same server): `python bench/pipeline.py`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# bench/ heads sys.path when run as a script, and bench/queue.py would shadow the stdlib's queue module.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import httpx  # noqa: E402

from bench.api import latencies, p95, server  # noqa: E402
from bench.pickup import make_repo  # noqa: E402
from config.settings import Settings  # noqa: E402
from runner.images import BUSYBOX_IMAGE, build_busybox_image  # noqa: E402
from runner.models import JobSpec, JobState  # noqa: E402
from runner.podman_user import PodmanUser  # noqa: E402
from runner.queue import PlannedJobRow, Queue  # noqa: E402
from runner.runtime import Runtime, open_runtime  # noqa: E402

ROUNDS = 5
PIPELINES = 10_000  # of 5 jobs each: lint, a 3-member test matrix that needs it, build that needs the matrix
LIST_GOAL_MS = 20.0
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


def fill_pipelines(db: Path, count: int) -> None:
    """`count` finished pipelines of 5 jobs over the last week, written through the queue API as the planner and a
    runner would (create, plan, claim and complete each job): about one in ten fails in a matrix member, which
    cancels its siblings (fail_fast) and skips the build."""
    rnd = random.Random(11)
    now = [time.time() - 7 * 86400]
    with Queue(db, max_concurrent=8, clock=lambda: now[0]) as queue:
        for i in range(count):
            sha = f"{rnd.getrandbits(160):040x}"
            spec = JobSpec(repo=f"https://git.example.test/acme/repo{i % 40}.git", ref=f"refs/heads/b{i % 25}",
                           sha=sha, event="push")
            pipeline_id = queue.create_pipeline(spec)
            rows = [PlannedJobRow(spec, "lint", "lint"),
                    *(PlannedJobRow(spec, "test", f"test (python={v})", ("lint",)) for v in ("3.11", "3.12", "3.13")),
                    PlannedJobRow(spec, "build", "build", ("test",))]
            queue.write_plan(pipeline_id, sha, rows)
            failing = rnd.random() < 0.1
            while (job := queue.claim("bench", 60)) is not None:
                now[0] += rnd.lognormvariate(2.5, 0.5)
                fails = failing and job.display == "test (python=3.12)"
                queue.complete(job.id, JobState.failure if fails else JobState.success, runner_id="bench")
            now[0] += 7 * 86400 / count
        queue.take_settlements()


def bench_list(root: Path, count: int, rounds: int) -> dict[str, float]:
    """p95 ms of the pipelines' reads on a real `forgeci serve` over `count` pipelines, and of the baseline."""
    data = root / "list-data"
    data.mkdir()
    start = time.perf_counter()
    fill_pipelines(data / "queue.db", count)
    print(f"filled the queue with {count:,} pipelines of 5 jobs in {time.perf_counter() - start:.1f}s",
          file=sys.stderr)
    rnd = random.Random(5)
    with server(data) as url, httpx.Client(base_url=url, timeout=30) as client:
        latencies(client, ["/openapi.json", "/pipelines?limit=50", "/pipelines/1"], 30)  # warm up
        return {
            "baseline": p95(latencies(client, ["/openapi.json"], rounds)),
            "list": p95(latencies(client, ["/pipelines?limit=50"], rounds)),
            "failed": p95(latencies(client, ["/pipelines?status=failure&limit=50"], rounds)),
            "one": p95(latencies(client, [f"/pipelines/{rnd.randint(1, count)}" for _ in range(rounds)], rounds)),
        }


def print_list_rows(figures: dict[str, float], count: int) -> None:
    base = figures["baseline"]
    for key, what in (("list", f"GET /pipelines?limit=50 (p95, {count:,} pipelines)"),
                      ("failed", "GET /pipelines?status=failure&limit=50 (p95)"),
                      ("one", "GET /pipelines/{id} (p95, random, 5 jobs)")):
        value = figures[key]
        print(f"{what:<52} {value:>7.1f}ms {base:>7.1f}ms {value / base:>9.1f}x  "
              f"(goal < {LIST_GOAL_MS:.0f} ms: {'met' if value < LIST_GOAL_MS else 'MISSED'}; "
              f"baseline GET /openapi.json)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", type=int, default=PIPELINES, help="pipelines in the history /pipelines reads")
    parser.add_argument("--rounds", type=int, default=300, help="sequential requests per read")
    parser.add_argument("--list-only", action="store_true", help="only the /pipelines rows (no containers)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="forgeci-bench-pipelines-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        listing = await asyncio.to_thread(bench_list, root, args.pipelines, args.rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.list_only:
        print(f"{'measure':<52} {'forgeci':>9} {'baseline':>9} {'result':>10}")
        print_list_rows(listing, args.pipelines)
        return
    await containers(listing, args.pipelines)


async def containers(listing: dict[str, float], count: int) -> None:
    """The chain and matrix rows (rootless Podman, the busybox image), printed with the /pipelines rows."""
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
        print_list_rows(listing, count)
    finally:
        if os.geteuid() != 0:
            user.run(["podman", "unshare", "rm", "-rf", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
