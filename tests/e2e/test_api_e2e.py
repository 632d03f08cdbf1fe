"""End to end through the API with real Podman: submit, follow the live log, cancel a running job, retry."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from bot.keys import StreamTiming
from config.settings import Settings
from runner.models import JobState
from tests.bot.api_helpers import api_client, parse_sse, podman_engine, runtime_of

pytestmark = [pytest.mark.slow, pytest.mark.podman]

MakeRepo = Callable[..., tuple[Path, str]]


async def wait_state(client: TestClient, job_id: int, done: Callable[[str], bool], timeout: float = 60) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = await (await client.get(f"/jobs/status?id={job_id}")).json()
        if done(job["state"]):
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} is still {job['state']}")


async def test_a_submitted_job_runs_and_its_log_streams_live_to_the_end(settings: Settings,
                                                                       make_repo: MakeRepo) -> None:
    repo, sha = make_repo({"README": "hi\n"})
    steps = [{"name": "count", "run": "for i in 1 2 3 4 5; do echo tick $i; sleep 0.2; done"},
             {"name": "colour", "run": "printf '\\033[32mgreen\\033[0m\\n'"}]
    async with api_client(settings, workers=True, timing=StreamTiming(keepalive=1, check=0.2),
                          engine=podman_engine(settings)) as client:
        response = await client.post("/jobs/submit", json={"repo": str(repo), "ref": "main", "sha": sha,
                                                            "steps": steps})
        job_id = (await response.json())["id"]
        stream = await client.get(f"/jobs/logs?id={job_id}")
        text = await asyncio.wait_for(stream.text(), 120)  # ends with the job
        events = parse_sse(text)
        lines = [json.loads(e["data"]) for e in events if "id" in e]
        assert [int(e["id"]) for e in events if "id" in e] == list(range(1, len(lines) + 1))
        out = [(line["step"], line["text"]) for line in lines if line["stream"] == "stdout"]
        assert out == [("count", f"tick {i}") for i in range(1, 6)] + [("colour", "\x1b[32mgreen\x1b[0m")]
        assert json.loads(events[-1]["data"])["state"] == "success"
        job = await (await client.get(f"/jobs/status?id={job_id}")).json()
        assert job["state"] == "success" and [s["state"] for s in job["steps"]] == ["success", "success"]
        assert job["steps"][0]["duration"] >= 0.8
        metrics = await (await client.get("/metrics?range=hour")).json()
        assert metrics["jobs"] == 1 and metrics["success_rate"] == 1.0


async def test_cancel_stops_a_running_job_and_retry_runs_it_again(settings: Settings, make_repo: MakeRepo) -> None:
    repo, sha = make_repo({"README": "hi\n"})
    steps = [{"name": "forever", "run": "echo started; sleep 600"}]
    async with api_client(settings, workers=True, engine=podman_engine(settings)) as client:
        job_id = (await (await client.post("/jobs/submit", json={"repo": str(repo), "ref": "main", "sha": sha,
                                                                  "steps": steps})).json())["id"]
        await wait_state(client, job_id, lambda s: s == "running")
        runtime = runtime_of(client)
        deadline = time.monotonic() + 60
        log = runtime.layout.log_file(job_id)
        while not log.exists() or "started" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, "the step never started"
            await asyncio.sleep(0.1)
        answer = await (await client.post("/jobs/cancel", json={"id": job_id})).json()
        assert answer == {"id": job_id, "state": "running", "cancel_requested": True}
        job = await wait_state(client, job_id, lambda s: s not in ("queued", "running"), timeout=60)
        assert job["state"] == "cancelled"
        response = await client.post("/jobs/retry", json={"id": job_id})
        new_id = (await response.json())["id"]
        await wait_state(client, new_id, lambda s: s == "running")
        await client.post("/jobs/cancel", json={"id": new_id})
        assert (await wait_state(client, new_id, lambda s: s not in ("queued", "running")))["state"] == "cancelled"
        assert runtime.queue.get(new_id).spec.meta["retry_of"] == str(job_id)
        assert runtime.queue.get(job_id).state is JobState.cancelled
