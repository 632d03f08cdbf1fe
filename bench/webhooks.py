"""Benchmark of webhook intake against a bare aiohttp handler, over loopback: `python bench/webhooks.py`.

The server under test runs in this process; the load generator is another process (this script with
`--generate`) that posts signed GitHub push deliveries. Two measures per server, same generator, same run:
throughput (closed loop, N connections, as fast as answers come) and latency at a fixed rate (open loop).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script, bench/ heads sys.path; the repository root takes its place so the packages import.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import hmac  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402
from contextlib import asynccontextmanager  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

if TYPE_CHECKING:
    from runner.queue import Queue

GOAL_RATIO = 0.5
GOAL_P99_MS = 50.0
GOAL_RATE = 300
SECRET = "bench-webhook-secret"
FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "github" / "push.with-new-branch.json"
BRANCHES = 50  # pushes spread over this many branches: each new push supersedes its branch's queued job


# -- load generator (the other process) ----------------------------------------------------------------------

def deliveries(count: int, start: int) -> list[tuple[bytes, dict[str, str]]]:
    """Signed push deliveries, each its own delivery id and commit, over BRANCHES branches."""
    template = json.loads(FIXTURE.read_text())
    out = []
    for i in range(start, start + count):
        payload = {**template, "ref": f"refs/heads/branch-{i % BRANCHES}",
                   "after": hashlib.sha1(str(i).encode()).hexdigest()}
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": f"bench-{i}",
                   "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}
        out.append((body, headers))
    return out


async def post(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> tuple[float, int]:
    started = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as response:
        await response.read()
        return time.perf_counter() - started, response.status


async def closed_loop(url: str, work: list[tuple[bytes, dict[str, str]]], connections: int) -> dict[str, Any]:
    """As fast as the server answers, `connections` requests in flight."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    items = iter(work)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
        async def worker() -> None:
            for body, headers in items:
                took, status = await post(session, url, body, headers)
                latencies.append(took)
                statuses[status] = statuses.get(status, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return {"rate": len(work) / elapsed, "statuses": statuses, **percentiles(latencies)}


async def open_loop(url: str, work: list[tuple[bytes, dict[str, str]]], rate: float) -> dict[str, Any]:
    """One request every 1/rate seconds whatever the answers do: latency as a forge sending at that rate sees it."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
        async def one(body: bytes, headers: dict[str, str]) -> None:
            took, status = await post(session, url, body, headers)
            latencies.append(took)
            statuses[status] = statuses.get(status, 0) + 1

        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for i, (body, headers) in enumerate(work):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(body, headers)))
        await asyncio.gather(*tasks)
        elapsed = loop.time() - start
    return {"rate": len(work) / elapsed, "statuses": statuses, **percentiles(latencies)}


def percentiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    cut = statistics.quantiles(ordered, n=100) if len(ordered) > 1 else [ordered[0]] * 99
    return {"p50_ms": cut[49] * 1000, "p99_ms": cut[98] * 1000, "max_ms": ordered[-1] * 1000}


async def generate(config: dict[str, Any]) -> dict[str, Any]:
    url, start = config["url"], config["start"]
    await closed_loop(url, deliveries(config["warmup"], start), config["connections"])  # connections, caches
    start += config["warmup"]
    if config["mode"] == "throughput":
        return await closed_loop(url, deliveries(config["requests"], start), config["connections"])
    return await open_loop(url, deliveries(int(config["rate"] * config["seconds"]), start), config["rate"])


# -- servers (this process) ----------------------------------------------------------------------------------

def bare_app() -> web.Application:
    """The floor: read the body, answer 202; no signature, no parsing, no queue."""
    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"jobs": []}, status=202)

    app = web.Application(client_max_size=25 * 1024 * 1024)
    app.router.add_post("/webhooks/github", accept)
    return app


def forgeci_app(data_dir: Path) -> web.Application:
    """The real server: verification, mapping, the delivery and its job committed before the 202."""
    from bot.app import create_app
    from config.settings import Settings

    base = Settings.default()
    settings = dataclasses.replace(
        base, data_dir=data_dir,
        runner=dataclasses.replace(base.runner, podman_url="unix:///var/empty/no-podman.sock"),
    )
    return create_app(settings, {"FORGECI_GITHUB_WEBHOOK_SECRET": SECRET}, workers=False)


def stored_deliveries(queue: Queue) -> int:
    """How many deliveries were committed, each with its pipeline (a push makes a pipeline, whose jobs planning
    adds later from the repository's file; counting jobs, as this once did, counted none)."""
    with queue._transaction("BEGIN") as conn:  # noqa: SLF001 - a benchmark's read of the table
        (delivered,) = conn.execute("SELECT count(*) FROM deliveries").fetchone()
        (pipelines,) = conn.execute("SELECT count(*) FROM pipelines").fetchone()
    return min(int(delivered), int(pipelines))


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/webhooks/github"
    finally:
        await runner.cleanup()


async def drive(url: str, config: dict[str, Any]) -> dict[str, Any]:
    """Run the load generator in another process against `url`; its JSON report."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--generate", json.dumps({**config, "url": url}),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"the load generator failed:\n{err.decode()}")
    return dict(json.loads(out))


async def measure(args: argparse.Namespace) -> int:
    if not FIXTURE.is_file():
        raise SystemExit(f"missing {FIXTURE}: the shared fixtures must sit beside the repository")
    config = {"warmup": args.warmup, "requests": args.requests, "connections": args.connections,
              "rate": args.rate, "seconds": args.seconds}
    data_dir = Path(tempfile.mkdtemp(prefix="forgeci-bench-", dir="/var/tmp"))
    data_dir.chmod(0o755)  # the runtime checks that the Podman user can reach its folders
    names = ("bare aiohttp 202", "forgeci webhook")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    offset = 0
    try:
        app = forgeci_app(data_dir / "data")
        async with serving(bare_app()) as bare_url, serving(app) as forgeci_url:
            # Rounds alternate between the two servers so that both see the same share of this machine's noise.
            for _ in range(args.rounds):
                for name, url in zip(names, (bare_url, forgeci_url)):
                    round_runs = {}
                    for mode in ("throughput", "latency"):
                        round_runs[mode] = await drive(url, {**config, "mode": mode, "start": offset})
                        offset += 10**6
                    runs[name].append(round_runs)
            from bot.keys import RUNTIME

            committed = stored_deliveries(app[RUNTIME].queue)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

    print(f"{'server':<18} {'round':>5} {'deliveries/s':>12} {'p50 ms':>7} {'p99 ms':>7}   "
          f"{'at ' + format(args.rate, 'g') + '/s: p50 ms':>16} {'p99 ms':>7} {'max ms':>7}")
    for name in names:
        for i, run in enumerate(runs[name], 1):
            t, lat = run["throughput"], run["latency"]
            print(f"{name:<18} {i:>5} {t['rate']:>12.0f} {t['p50_ms']:>7.1f} {t['p99_ms']:>7.1f}   "
                  f"{lat['p50_ms']:>16.1f} {lat['p99_ms']:>7.1f} {lat['max_ms']:>7.1f}")
    ratios = [f["throughput"]["rate"] / b["throughput"]["rate"] for b, f in zip(*runs.values())]
    ratio = statistics.median(ratios)
    p99 = max(run["latency"]["p99_ms"] for run in runs["forgeci webhook"])
    codes: dict[str, int] = {}
    for run in runs["forgeci webhook"]:
        for result in run.values():
            for code, count in result["statuses"].items():
                codes[code] = codes.get(code, 0) + count
    sent = args.rounds * (2 * args.warmup + args.requests + int(args.rate * args.seconds))
    print(f"ratio forgeci/bare: {ratio:.2f}x median of rounds {', '.join(f'{r:.2f}' for r in ratios)} "
          f"(goal >= {GOAL_RATIO}x)")
    print(f"p99 at {args.rate:g}/s: {p99:.1f} ms worst of rounds (goal < {GOAL_P99_MS:.0f} ms); "
          f"answers {codes}; deliveries committed with their pipelines {committed}/{sent}")
    correct = committed == sent and set(codes) == {"202"}
    met = ratio >= GOAL_RATIO and p99 < GOAL_P99_MS
    print(f"goals -> {'met' if met else 'NOT met'}" + ("" if correct else "; DELIVERIES LOST OR REFUSED"))
    # Timings are a report, not a gate (too noisy on a shared machine); a lost or refused delivery is a bug.
    return 0 if correct else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="deliveries in the throughput run")
    parser.add_argument("--connections", type=int, default=16, help="requests in flight in the throughput run")
    parser.add_argument("--rate", type=float, default=GOAL_RATE, help="deliveries per second in the latency run")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the latency run")
    parser.add_argument("--warmup", type=int, default=300, help="deliveries before each measured run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of both servers")
    parser.add_argument("--generate", help=argparse.SUPPRESS)  # internal: be the load generator
    args = parser.parse_args(argv)
    if args.generate:
        print(json.dumps(asyncio.run(generate(json.loads(args.generate)))))
        return 0
    logging.basicConfig(level=logging.WARNING)
    return asyncio.run(measure(args))


if __name__ == "__main__":
    sys.exit(main())
