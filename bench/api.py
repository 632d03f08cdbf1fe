"""Benchmark of the HTTP API and SSE log fan-out against a real `forgeci serve`: `python bench/api.py`.

1. With 100,000 finished jobs in the database: p95 latency of `GET /jobs?limit=50`, `GET /jobs/status` and the
   `/dashboard` page, next to `GET /openapi.json` (a static document: the HTTP stack's own cost) as the baseline.
2. Log fan-out: a job in the job image prints timestamped lines at a fixed rate; N followers read `/jobs/logs`;
   the p95 delay from the write in the container to the arrival at a follower, for 1 follower (the baseline) and
   for 100, at 1,000 lines/s and, when that misses the goal, at lower rates.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository root, not bench/

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402

import aiohttp  # noqa: E402
import httpx  # noqa: E402

from runner.queue import Queue  # noqa: E402

JOBS = 100_000
READ_GOAL_MS = 20.0
DASHBOARD_GOAL_MS = 150.0
FANOUT_GOAL_MS = 100.0
JOB_IMAGE = "localhost/forgeci-job:latest"
LINE = re.compile(rb'"text":"L (\d+) ([0-9.]+)')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(0.95 * len(ordered) + 0.5) - 1)]


# -- the database -------------------------------------------------------------------------------------


def fill(db: Path, count: int) -> None:
    """`count` finished jobs over the last week, each with three steps, written in bulk (the trigger fills metrics)."""
    Queue(db).close()  # the schema
    rnd = random.Random(7)
    now = time.time()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN")
    jobs, steps, finishes = [], [], []
    for job_id in range(1, count + 1):
        started = now - 7 * 86400 + (job_id / count) * 7 * 86400 - 120
        duration = rnd.lognormvariate(4, 0.6)
        jobs.append((job_id, f"https://git.example.test/acme/repo{job_id % 40}.git", f"refs/heads/b{job_id % 25}",
                     f"{rnd.getrandbits(160):040x}", "push", rnd.randint(0, 10), started - 3,
                     json.dumps({"pusher": "ada", "message": "Fix the flaky test"})))
        t = started
        for index, name in enumerate(("install", "lint", "test")):
            steps.append((job_id, index, name, t, t + duration / 3))
            t += duration / 3
        r = rnd.random()
        state = "success" if r < 0.85 else "failure" if r < 0.95 else "cancelled" if r < 0.98 else "timeout"
        finishes.append((state, started, started + duration, rnd.random() < 0.7, job_id))
    conn.executemany("INSERT INTO jobs (id, repo, ref, sha, event, priority, queued_at, meta) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", jobs)
    conn.executemany("INSERT INTO steps (job_id, idx, name, state, exit_code, started_at, finished_at) "
                     "VALUES (?, ?, ?, 'success', 0, ?, ?)", steps)
    conn.executemany("UPDATE jobs SET state = ?, attempts = 1, started_at = ?, finished_at = ?, cache_hit = ? "
                     "WHERE id = ?", finishes)
    conn.execute("COMMIT")
    conn.close()


# -- the server ---------------------------------------------------------------------------------------


@contextmanager
def server(data_dir: Path) -> Iterator[str]:
    port = free_port()
    config = data_dir.parent / "forgeci.toml"
    config.write_text(f'data_dir = "{data_dir}"\n[server]\nport = {port}\n'
                      f'[runner]\nimage = "{JOB_IMAGE}"\nnetwork = "none"\n[queue]\nmax_concurrent = 2\n')
    env = {k: v for k, v in os.environ.items() if k != "FORGECI_API_TOKEN"}
    env["FORGECI_LOG_LEVEL"] = "WARNING"
    forgeci = Path(sys.executable).with_name("forgeci")
    process = subprocess.Popen([str(forgeci), "--config", str(config), "serve"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"forgeci serve did not start: {process.stderr.read() if process.stderr else ''}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


# -- reads --------------------------------------------------------------------------------------------


def latencies(client: httpx.Client, paths: list[str], rounds: int) -> list[float]:
    out = []
    for i in range(rounds):
        path = paths[i % len(paths)]
        start = time.perf_counter()
        response = client.get(path)
        out.append((time.perf_counter() - start) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"GET {path}: {response.status_code} {response.text[:200]}")
    return out


def bench_reads(url: str, count: int, rounds: int) -> dict[str, float]:
    rnd = random.Random(3)
    with httpx.Client(base_url=url, timeout=30) as client:
        latencies(client, ["/openapi.json", "/jobs?limit=50", "/dashboard"], 30)  # warm up
        figures = {
            "GET /openapi.json (baseline)": p95(latencies(client, ["/openapi.json"], rounds)),
            "GET /jobs?limit=50": p95(latencies(client, ["/jobs?limit=50"], rounds)),
            "GET /jobs/status": p95(latencies(client, [f"/jobs/status?id={rnd.randint(1, count)}"
                                                       for _ in range(rounds)], rounds)),
            "GET /dashboard": p95(latencies(client, ["/dashboard"], max(rounds // 4, 20))),
            "GET /dashboard?range=week": p95(latencies(client, ["/dashboard?range=week"], max(rounds // 4, 20))),
        }
    return figures


async def uncached_dashboard(data_dir: Path, rounds: int) -> dict[str, float]:
    """p95 of /dashboard renders that all recompute the range aggregates (the app's cache turned off)."""
    import dataclasses

    from aiohttp.test_utils import TestClient, TestServer

    from bot.app import create_app
    from bot.keys import METRICS
    from bot.metrics import MetricsCache
    from config.settings import Settings

    base = Settings.default()
    settings = dataclasses.replace(base, data_dir=data_dir, runner=dataclasses.replace(
        base.runner, podman_url="unix:///nonexistent/forgeci-bench.sock"))  # reads only: no Podman service
    app = create_app(settings, {}, workers=False)
    app[METRICS] = MetricsCache(fresh_for={})
    out = {}
    async with TestClient(TestServer(app)) as client:
        for path in ("/dashboard", "/dashboard?range=week"):
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                response = await client.get(path)
                await response.read()
                times.append((time.perf_counter() - start) * 1000)
            out[f"GET {path} (uncached)"] = p95(times)
    return out


def aggregate_costs(db: Path) -> dict[str, float]:
    """What one uncached computation of a range's aggregates costs (the dashboard caches them a few seconds)."""
    from bot.metrics import range_stats

    out = {}
    with Queue(db) as queue:
        for name in ("day", "week"):
            times, total = [], 0
            for _ in range(5):
                start = time.perf_counter()
                total = range_stats(queue, name).total
                times.append((time.perf_counter() - start) * 1000)
            out[f"{name} ({total:,} jobs)"] = statistics.median(times)
    return out


# -- fan-out ------------------------------------------------------------------------------------------


def make_repo(root: Path) -> Path:
    """A one-commit repository the runner can clone (readable by the Podman user)."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@e", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@e"}
    (repo / "README").write_text("bench\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env, capture_output=True)
    for path in [root, repo, *repo.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o055)
    return repo


PRINTER = """python3 -u -c '
import sys, time
rate, count = {rate}, {count}
start = time.time() + 1.0
for i in range(count):
    due = start + i / rate
    pause = due - time.time()
    if pause > 0:
        time.sleep(pause)
    sys.stdout.write("L %d %.6f\\n" % (i, time.time()))
    sys.stdout.flush()
'"""


async def follower(session: aiohttp.ClientSession, url: str, job_id: int, delays: list[float],
                   ready: asyncio.Event, counter: list[int]) -> int:
    """Read one SSE stream to its end; record write-to-arrival delays of the timestamped lines."""
    got = 0
    async with session.get(f"{url}/jobs/logs?id={job_id}", timeout=aiohttp.ClientTimeout(total=None)) as response:
        counter[0] += 1
        if counter[0] >= counter[1]:
            ready.set()
        buffer = b""
        async for chunk in response.content.iter_any():
            now = time.time()
            buffer += chunk
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                match = LINE.search(event)
                if match:
                    delays.append(now - float(match.group(2)))
                    got += 1
                elif b"event: end" in event:
                    return got
    return got


async def fanout(url: str, repo: Path, followers: int, rate: int, seconds: float) -> tuple[float, float, int]:
    """(p50 ms, p95 ms, lines each follower got) for `followers` following a job printing `rate` lines/s."""
    count = int(rate * seconds)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        body = {"repo": str(repo), "ref": "main", "steps": [{"name": "print", "run": PRINTER.format(rate=rate,
                                                                                                  count=count)}]}
        async with session.post(f"{url}/jobs/submit", json=body) as response:
            job_id = (await response.json())["id"]
        delays: list[float] = []
        ready = asyncio.Event()
        counter = [0, followers]
        tasks = [asyncio.create_task(follower(session, url, job_id, delays, ready, counter))
                 for _ in range(followers)]
        got = await asyncio.wait_for(asyncio.gather(*tasks), seconds + 180)
        async with session.get(f"{url}/jobs/status?id={job_id}") as response:
            state = (await response.json())["state"]
    if state != "success" or min(got) != count:
        raise SystemExit(f"fan-out job {job_id} ended {state}; followers got {min(got)}..{max(got)} of {count} lines")
    ms = [d * 1000 for d in delays]
    return statistics.median(ms), p95(ms), min(got)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=JOBS)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--followers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the job prints, per fan-out run")
    parser.add_argument("--rates", default="1000,500,250,100", help="lines/s to try, highest first")
    args = parser.parse_args()
    if shutil.which("podman") is None:
        print("podman is missing: run scripts/setup", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="forgeci-bench-api-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        data = root / "data"
        data.mkdir()
        start = time.perf_counter()
        fill(data / "queue.db", args.jobs)
        print(f"filled the queue with {args.jobs:,} finished jobs in {time.perf_counter() - start:.1f}s")
        repo = make_repo(root / "git")
        with server(data) as url:
            reads = bench_reads(url, args.jobs, args.rounds)
            reads.update(asyncio.run(uncached_dashboard(data, max(args.rounds // 6, 20))))
            uncached = aggregate_costs(data / "queue.db")
            base = reads["GET /openapi.json (baseline)"]
            print(f"\np95 latency with {args.jobs:,} finished jobs ({args.rounds} sequential requests each):")
            for name, value in reads.items():
                goal = DASHBOARD_GOAL_MS if "dashboard" in name else READ_GOAL_MS
                mark = "" if "baseline" in name else f"  goal < {goal:.0f} ms: {'met' if value < goal else 'MISSED'}"
                print(f"  {name:<38} {value:7.2f} ms   {value / base:5.1f}x baseline{mark}")
            print("  the range aggregates alone, uncached (the server reuses them for 5 s a day, 15 s a week):")
            for name, value in uncached.items():
                print(f"    {name:<36} {value:7.2f} ms (median of 5)")

            rates = [int(r) for r in args.rates.split(",") if r]
            if not rates:
                return 0
            print(f"\nlog fan-out: write in the container -> arrival at a follower ({args.seconds:.0f} s of lines):")
            best = None
            for rate in rates:
                one = asyncio.run(fanout(url, repo, 1, rate, args.seconds))
                many = asyncio.run(fanout(url, repo, args.followers, rate, args.seconds))
                ok = many[1] < FANOUT_GOAL_MS
                print(f"  {rate:5d} lines/s: 1 follower p50 {one[0]:6.1f} ms p95 {one[1]:6.1f} ms | "
                      f"{args.followers} followers p50 {many[0]:6.1f} ms p95 {many[1]:6.1f} ms "
                      f"({many[1] / max(one[1], 0.001):.1f}x)  goal p95 < {FANOUT_GOAL_MS:.0f} ms: "
                      f"{'met' if ok else 'MISSED'}")
                if ok:
                    best = rate
                    break
            print(f"  highest rate meeting the goal with {args.followers} followers: "
                  f"{f'{best} lines/s' if best else 'none of those tried'}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
