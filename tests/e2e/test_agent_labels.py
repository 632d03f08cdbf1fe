"""Runner labels and the agent registry on the fake engine: two agents with different labels over real HTTP,
the coordinator's SQLite queue, moto's S3 server as the shared store (helpers of test_agents_fake.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from config.settings import Settings
from runner.agent.agent import Agent
from runner.models import JobSpec, JobState
from tests.e2e.test_agents_fake import (
    S3_ENV, MakeRepo, agent_settings, base, coordinator, moto_server, runtime, wait_for,
)
from tests.fake_engine import FakeEngine, Script

__all__ = ["base", "moto_server"]

EMBEDDED = """
[jobs.any]
[[jobs.any.steps]]
run = "small"
[jobs.big]
runs_on = ["big", "linux"]
[[jobs.big.steps]]
run = "big"
"""
PIPELINE = """
snapshot = "never"
[jobs.small]
runs_on = ["small"]
[[jobs.small.steps]]
name = "s"
run = "small"
[jobs.big]
runs_on = ["big", "linux"]
[[jobs.big.steps]]
name = "b"
run = "big"
[jobs.gpu]
runs_on = ["gpu"]
[[jobs.gpu.steps]]
name = "g"
run = "gpu"
"""


@asynccontextmanager
async def labelled(settings: Settings, server: TestServer, token: str, label: str, labels: tuple[str, ...],
                   engine: FakeEngine) -> AsyncIterator[Agent]:
    one = Agent(settings, str(server.make_url("")), token, label=label, environ=S3_ENV, engine=engine,
                labels=labels)
    task = asyncio.create_task(one.run())
    try:
        yield one
    finally:
        one.stop()
        await asyncio.wait_for(task, 60)


def cli_output(argv: list[str]) -> str:
    import contextlib
    import io

    from forgeci_cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue()


async def get_json(server: TestServer, path: str) -> dict:
    async with aiohttp.ClientSession() as http, http.get(str(server.make_url(path))) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_labels_route_jobs_and_a_job_no_agent_can_take_waits(
        base: Settings, tmp_path: Path, make_local_repo: MakeRepo) -> None:
    repo, sha = make_local_repo({".forgeci.toml": PIPELINE})
    small, big = FakeEngine(), FakeEngine()
    for engine in (small, big):
        engine.on("small", Script(lines=["small ran"], delay=5.0))
        engine.on("big", Script(lines=["big ran"], delay=5.0))
    async with coordinator(base) as server:
        rt = runtime(server)
        t_small = rt.queue.create_agent_token("small")
        t_big = rt.queue.create_agent_token("big")
        async with labelled(agent_settings(base, tmp_path, "a1"), server, t_small, "s1", ("linux", "small"), small), \
                labelled(agent_settings(base, tmp_path, "a2"), server, t_big, "b1", ("big", "linux"), big):
            submitted = await rt.control.submit_pipeline(JobSpec(repo=str(repo), ref="main", sha=sha))
            pid = submitted.pipeline_id

            def jobs() -> dict:
                return {job.name: job for job in rt.queue.jobs_of_pipeline(pid)}
            await wait_for(lambda: len(jobs()) == 3 and all(jobs()[n].steps and jobs()[n].state is JobState.running
                                                             for n in ("small", "big")))
            # While they work, /agents lists both, with their labels and running jobs.
            listed = await get_json(server, "/agents")
            by_name = {a["name"]: a for a in listed["agents"]}
            assert set(by_name) == {"small", "big"}, listed
            assert by_name["big"]["labels"] == ["big", "linux"] and by_name["small"]["labels"] == ["linux", "small"]
            assert by_name["big"]["online"] and by_name["big"]["version"]
            assert by_name["big"]["address"] == "127.0.0.1"
            # `forgeci agents` prints the same, over the API.
            out = await asyncio.to_thread(cli_output, ["agents", "--server", str(server.make_url("")).rstrip("/")])
            lines = {line.split()[0]: line for line in out.splitlines() if line.startswith(("big:", "small:"))}
            assert set(lines) == {"big:b1", "small:s1"}, out
            assert "big,linux" in lines["big:b1"] and f"{jobs()['big'].id} (1/1)" in lines["big:b1"], out
            assert "embedded runner: off" in out, out
            assert by_name["big"]["running_jobs"] == [jobs()["big"].id], listed
            assert by_name["small"]["running_jobs"] == [jobs()["small"].id], listed
            await wait_for(lambda: all(jobs()[n].state.is_terminal for n in ("small", "big")))
            got = jobs()
            assert got["big"].state is JobState.success and got["small"].state is JobState.success
            assert got["big"].runner_id.startswith("agent:big:b1:"), got["big"].runner_id
            # The job no agent can take waits, with the reason shown; it is not failed.
            await asyncio.sleep(1.5)
            gpu = rt.queue.get(got["gpu"].id)
            assert gpu.state is JobState.queued, gpu
            assert rt.queue.wait_reasons([gpu.id]) == {gpu.id: "waiting for a runner with: gpu"}
            queued = await get_json(server, "/jobs?order=dispatch")
            assert [j.get("wait_reason") for j in queued["jobs"] if j["id"] == gpu.id] == \
                ["waiting for a runner with: gpu"], queued
        assert rt.queue.get(got["gpu"].id).state is JobState.queued
        # An agent with the label comes: the job runs.
        gpu_engine = FakeEngine()
        gpu_engine.on("gpu", Script(lines=["gpu ran"]))
        t_gpu = rt.queue.create_agent_token("gpu")
        async with labelled(agent_settings(base, tmp_path, "a3"), server, t_gpu, "g1", ("gpu",), gpu_engine):
            await wait_for(lambda: rt.queue.get(got["gpu"].id).state.is_terminal)
        assert rt.queue.get(got["gpu"].id).state is JobState.success
        assert rt.queue.pipeline(pid).state.is_terminal


async def test_a_claim_with_bad_labels_is_a_400(base: Settings) -> None:
    async with coordinator(base) as server:
        rt = runtime(server)
        token = rt.queue.create_agent_token("solo")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            for body in ({"labels": "big"}, {"labels": ["b d"]}, {"labels": [1]}, {"version": 3},
                         {"max_concurrent": 0}):
                async with http.post(str(server.make_url("/agent/v1/claim")), json={"wait": 0, **body}) as r:
                    assert r.status == 400, (body, await r.text())
                    assert "error" in await r.json()


async def test_the_embedded_runner_takes_only_what_its_labels_allow(
        fake_settings: Settings, make_local_repo: MakeRepo) -> None:
    from tests.conftest import open_runtime, with_runner

    repo, sha = make_local_repo({".forgeci.toml": EMBEDDED})
    settings = with_runner(fake_settings, labels=("linux",))
    engine = FakeEngine()
    for command in ("small", "big"):
        engine.on(command, Script(lines=[command]))
    async with open_runtime(settings, {}, workers=True, engine=engine) as rt:
        submitted = await rt.control.submit_pipeline(JobSpec(repo=str(repo), ref="main", sha=sha))
        pid = submitted.pipeline_id
        await wait_for(lambda: any(j.name == "any" and j.state.is_terminal for j in rt.queue.jobs_of_pipeline(pid)))
        await asyncio.sleep(1.0)
        got = {j.name: j for j in rt.queue.jobs_of_pipeline(pid)}
        assert got["any"].state is JobState.success and got["big"].state is JobState.queued
        assert rt.queue.wait_reasons([got["big"].id]) == {got["big"].id: "waiting for a runner with: big, linux"}


@pytest.mark.slow
async def test_the_dashboard_and_the_tui_show_both_agents_at_work(
        base: Settings, tmp_path: Path, make_local_repo: MakeRepo) -> None:
    from client.api import Client
    from tests.bot.browser_helpers import chromium
    from tests.tui.conftest import wait_until
    from tui.agents_panel import AgentsPanel
    from tui.app import ForgeciApp

    repo, sha = make_local_repo({".forgeci.toml": PIPELINE})
    small, big = FakeEngine(), FakeEngine()
    for engine in (small, big):
        engine.on("small", Script(lines=["small ran"], delay=15.0))
        engine.on("big", Script(lines=["big ran"], delay=15.0))
    async with coordinator(base) as server:
        rt = runtime(server)
        t_small, t_big = rt.queue.create_agent_token("small"), rt.queue.create_agent_token("big")
        async with labelled(agent_settings(base, tmp_path, "a1"), server, t_small, "s1", ("linux", "small"), small), \
                labelled(agent_settings(base, tmp_path, "a2"), server, t_big, "b1", ("big", "linux"), big):
            submitted = await rt.control.submit_pipeline(JobSpec(repo=str(repo), ref="main", sha=sha))

            def jobs() -> dict:
                return {job.name: job for job in rt.queue.jobs_of_pipeline(submitted.pipeline_id)}
            await wait_for(lambda: len(jobs()) == 3 and all(jobs()[n].state is JobState.running
                                                             for n in ("small", "big")))
            got = jobs()
            url = str(server.make_url("")).rstrip("/")
            async with chromium() as browser:
                page = await browser.new_page()
                await page.goto(f"{url}/dashboard")
                await page.wait_for("document.querySelectorAll('#agents tr[data-agent]').length === 2")
                row = "document.querySelector('#agents tr[data-agent=\"big:b1\"]')"
                assert await page.evaluate(f"{row}.querySelector('.labels').textContent.trim()") == "big linux"
                assert await page.evaluate(f"{row}.querySelector('.running a').textContent") == f"#{got['big'].id}"
                assert await page.evaluate(f"{row}.querySelector('.pill').textContent") == "online"
                waits = await page.evaluate("[...document.querySelectorAll('td.wait')].map(t => t.textContent)")
                assert waits == ["waiting for a runner with: gpu"], waits  # the Queued list names the label
                await page.screenshot("dashboard-agents")
                await page.goto(f"{url}/dashboard/jobs/{got['big'].id}")
                on = await page.evaluate("document.querySelector('#attempts-on').textContent")
                assert "agent big:b1" in on and "running" in on, on
            app = ForgeciApp(Client(url))
            async with app.run_test(size=(140, 30)) as pilot:
                await pilot.press("6")
                table = app.query_one(AgentsPanel).table
                await wait_until(pilot, lambda: table.row_count == 2, timeout=30)
                row = [str(cell) for cell in table.get_row("big:b1")]
                assert row[:4] == ["big:b1", "online", "big,linux", f"{got['big'].id} (1/1)"], row
                small_row = [str(cell) for cell in table.get_row("small:s1")]
                assert small_row[2] == "linux,small" and small_row[3].startswith(str(got["small"].id)), small_row
                summary = str(app.query_one("#agents-summary").render())
                assert "2 agents, 2 online" in summary and "embedded runner off" in summary, summary
                # The job screen names the agent that runs the attempt.
                app.open_job(got["big"].id)
                def head() -> str:
                    found = app.screen.query("#job-head")
                    return str(found.first().render()) if found else ""
                await wait_until(pilot, lambda: "ran on #1 agent big:b1" in head(), timeout=30)
