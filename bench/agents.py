"""What an agent costs, in one run: `python bench/agents.py [--rounds 20] [--idle 50] [--seconds 20]`.

1. Pickup: enqueue -> first step started (as the coordinator records it) through an agent talking HTTP to the
   coordinator, against the embedded runner in the same run; both on the fake engine (tests/fake_engine.py), so the
   figure is what the agent path adds (claim wake-up, handout, the step report), not Podman's container start, which
   is the same on both. Goal: agent <= embedded + 50 ms (median).
2. Claims per second with 4 agents (raw agent-API clients: claim, then report success) on a full queue, against a
   `forgeci serve` subprocess with `runner.embedded = false`.
3. The coordinator's CPU per idle agent: N clients holding long polls (30 s, re-polled) on an empty queue, the
   server process's CPU time (/proc) against the same seconds with none. Goal: 100 idle agents on one core.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/ heads sys.path when run as a script, and bench/queue.py would shadow the stdlib's queue module.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import aiohttp  # noqa: E402
from aiohttp.test_utils import TestServer  # noqa: E402

from bench.pickup import make_repo  # noqa: E402
from bot.app import create_app  # noqa: E402
from bot.keys import RUNTIME  # noqa: E402
from config.settings import Settings, StorageSettings  # noqa: E402
from runner.agent.agent import Agent  # noqa: E402
from runner.agent.wire import API  # noqa: E402
from runner.events import JobEvent  # noqa: E402
from runner.layout import DataLayout  # noqa: E402
from runner.models import JobSpec  # noqa: E402
from runner.queue import Queue  # noqa: E402
from runner.runtime import Runtime, open_runtime  # noqa: E402
from tests.fake_engine import FAKE_IMAGE, FakeEngine, Script  # noqa: E402
from tests.runner.test_store import MotoServer  # noqa: E402

S3_ENV = {"FORGECI_S3_ACCESS_KEY": "k", "FORGECI_S3_SECRET_KEY": "s"}
STEP = {"snapshot": "never", "steps": [{"name": "go", "run": "go"}]}
PICKUP_GOAL_MS = 50.0
CLAIM_AGENTS = 4


def base_settings(data_dir: Path) -> Settings:
    base = Settings.default()
    runner = dataclasses.replace(base.runner, image=FAKE_IMAGE, network="none", ca_bundle="")
    return dataclasses.replace(base, data_dir=data_dir, runner=runner)


def engine() -> FakeEngine:
    fake = FakeEngine()
    fake.on("go", Script(lines=["went"]))
    return fake


async def pickups(rt: Runtime, repo: Path, sha: str, rounds: int) -> list[float]:
    """Seconds from submit to the first step's start, one job at a time."""
    times = []
    for _ in range(rounds + 1):  # the first warms up (mirror, imports)
        events = rt.events.subscribe()
        started = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        job_id = await rt.control.submit(JobSpec(repo=str(repo), ref="main", sha=sha, pipeline=STEP))
        while True:
            event = await asyncio.wait_for(started, 60)
            if isinstance(event, JobEvent) and event.job_id == job_id and event.kind == "step":
                times.append(time.perf_counter() - t0)
                break
            started = asyncio.ensure_future(anext(events))
        await events.aclose()
        while not rt.queue.get(job_id).state.is_terminal:
            await asyncio.sleep(0.01)
    return times[1:]


async def embedded_pickup(root: Path, repo: Path, sha: str, rounds: int) -> list[float]:
    async with open_runtime(base_settings(root / "embedded"), {}, workers=True, engine=engine()) as rt:
        return await pickups(rt, repo, sha, rounds)


async def agent_pickup(root: Path, repo: Path, sha: str, rounds: int) -> list[float]:
    moto = MotoServer()
    moto.start()
    try:
        settings = base_settings(root / "coordinator")
        settings = dataclasses.replace(settings, storage=StorageSettings(url=moto.url("bench")),
                                       runner=dataclasses.replace(settings.runner, embedded=False))
        server = TestServer(create_app(settings, S3_ENV, workers=True, engine=FakeEngine()), host="127.0.0.1")
        await server.start_server()
        try:
            rt: Runtime = server.app[RUNTIME]
            token = rt.queue.create_agent_token("bench")
            agent = Agent(dataclasses.replace(settings, data_dir=root / "agent"), str(server.make_url("")), token,
                          label="a1", environ=S3_ENV, engine=engine())
            task = asyncio.create_task(agent.run())
            try:
                return await pickups(rt, repo, sha, rounds)
            finally:
                agent.stop()
                await asyncio.wait_for(task, 60)
        finally:
            await server.close()
    finally:
        moto.stop()


# -- against a `forgeci serve` subprocess ------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    """`forgeci serve` with runner.embedded = false on a data dir of its own; its CPU seconds from /proc."""

    def __init__(self, root: Path) -> None:
        root.chmod(0o755)  # as root, the server runs Podman as runner.podman_user, who must reach its data dir
        self.data_dir = root / "serve"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = root / "serve.toml"
        config.write_text(f'data_dir = "{self.data_dir}"\n[server]\nport = {self.port}\n'
                          f'[runner]\nembedded = false\n[queue]\nmax_concurrent = 1000\n')
        self.data_dir.mkdir(parents=True)
        self.queue = Queue(DataLayout(self.data_dir).db, max_concurrent=1000, max_retries=0)
        env = {k: v for k, v in os.environ.items() if k != "FORGECI_API_TOKEN"}
        env["FORGECI_LOG_LEVEL"] = "WARNING"
        self.proc = subprocess.Popen([sys.executable, "-m", "forgeci_cli", "--config", str(config), "serve"],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    async def ready(self) -> None:
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                try:
                    async with http.get(f"{self.url}/openapi.json") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        self.proc.kill()
        raise SystemExit(f"forgeci serve did not start: {self.proc.communicate()[1].decode()[-2000:]}")

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.queue.close()


async def claim_loop(url: str, token: str, label: str, stop: float) -> int:
    done = 0
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        while time.monotonic() < stop:
            async with http.post(f"{url}{API}/claim", json={"label": label, "wait": 0}) as r:
                if r.status != 200:
                    break
                handout = await r.json()
            body = {"lease": handout["lease"]["id"], "outcome": {"state": "success"}}
            async with http.post(f"{url}{API}/jobs/{handout['job']['id']}/result", json=body) as r:
                assert r.status == 200, await r.text()
            done += 1
    return done


async def claims_per_second(serve: Serve, jobs: int, seconds: float) -> float:
    for i in range(jobs):
        serve.queue.enqueue(JobSpec(repo="/nowhere", ref="main", pipeline=STEP))
    tokens = [serve.queue.create_agent_token(f"claim-{i}") for i in range(CLAIM_AGENTS)]
    t0 = time.monotonic()
    counts = await asyncio.gather(*(claim_loop(serve.url, token, f"c{i}", t0 + seconds)
                                    for i, token in enumerate(tokens)))
    return sum(counts) / (time.monotonic() - t0)


async def idle_poll(url: str, token: str, label: str, stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        while not stop.is_set():
            async with http.post(f"{url}{API}/claim", json={"label": label, "wait": 30}) as r:
                await r.read()


async def idle_cpu(serve: Serve, agents: int, seconds: float) -> tuple[float, float]:
    """(server CPU seconds per second with no agent, and with `agents` idle long polls)."""
    c0 = serve.cpu()
    await asyncio.sleep(seconds)
    base = (serve.cpu() - c0) / seconds
    tokens = [serve.queue.create_agent_token(f"idle-{i}") for i in range(agents)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(idle_poll(serve.url, token, f"i{i}", stop)) for i, token in enumerate(tokens)]
    await asyncio.sleep(3)  # every poll is in flight
    c1 = serve.cpu()
    await asyncio.sleep(seconds)
    loaded = (serve.cpu() - c1) / seconds
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return base, loaded


def ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:.1f} ms, p90 {sorted(values)[int(len(values) * 0.9)] * 1000:.1f} ms"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--idle", type=int, default=50, help="idle agents for the CPU figure")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="forgeci-bench-agents-") as tmp:
        root = Path(tmp)
        repo, sha = make_repo(root, "repo", "")
        embedded = await embedded_pickup(root, repo, sha, args.rounds)
        agent = await agent_pickup(root, repo, sha, args.rounds)
        extra = (statistics.median(agent) - statistics.median(embedded)) * 1000
        print(f"pickup (enqueue -> first step), {args.rounds} jobs each, fake engine:")
        print(f"  embedded runner  {ms(embedded)}")
        print(f"  agent over HTTP  {ms(agent)}")
        print(f"  the agent adds   {extra:+.1f} ms (goal <= {PICKUP_GOAL_MS:.0f} ms): "
              f"{'ok' if extra <= PICKUP_GOAL_MS else 'MISSED'}")
        serve = Serve(root)
        try:
            await serve.ready()
            rate = await claims_per_second(serve, 3000, min(args.seconds, 10.0))
            print(f"claims per second, {CLAIM_AGENTS} agents on a full queue (claim + result each): {rate:.0f}/s")
            base, loaded = await idle_cpu(serve, args.idle, args.seconds)
            per_agent = max(0.0, loaded - base) / args.idle
            print(f"coordinator CPU: {base * 100:.2f}% of a core with no agent, {loaded * 100:.2f}% with "
                  f"{args.idle} idle agents: {per_agent * 100:.3f}% per idle agent; 100 idle agents "
                  f"{per_agent * 100 * 100:.1f}% of a core ({'ok' if per_agent * 100 <= 1.0 else 'MISSED'}); "
                  f"one core holds ~{(1 / per_agent) if per_agent else float('inf'):.0f}")
        finally:
            serve.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
