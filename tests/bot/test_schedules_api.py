"""GET /schedules and POST /schedules/{name}/run, and `forgeci schedules`: next due time, last pipeline and its
state; a scheduled pipeline has its own concurrency group, so a push to its branch does not cancel it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from config.schedules import ScheduleSpec
from config.settings import Settings
from forgeci_cli import main
from runner.models import PipelineState
from tests.bot.api_helpers import api_client, live_server, runtime_of
from tests.bot.webhook_helpers import ENV, fixture_json, github_headers
from tests.fake_engine import FakeEngine, Script

MakeRepo = Callable[..., tuple[Path, str]]
PIPELINE = '[[steps]]\nname = "nightly"\nrun = "nightly"\n'


def scheduled(settings: Settings, repo: Path) -> Settings:
    nightly = ScheduleSpec(name="nightly", repo=str(repo), ref="main", cron="0 3 * * *", env={"FULL": "1"})
    return dataclasses.replace(settings, schedules=(nightly,))


async def test_list_and_run_a_schedule(settings: Settings, make_local_repo: MakeRepo, fake_engine: FakeEngine) -> None:
    repo, _ = make_local_repo({".forgeci.toml": PIPELINE})
    settings = scheduled(settings, repo)
    async with api_client(settings, ENV, workers=True, engine=fake_engine) as client:
        [listed] = (await (await client.get("/schedules")).json())["schedules"]
        [nightly] = settings.schedules
        assert listed == {"name": "nightly", "repo": str(repo), "ref": "main", "cron": "0 3 * * *",
                          "timezone": "UTC", "next_due": nightly.next_due(time.time()), "last_pipeline": None}

        response = await client.post("/schedules/nightly/run")
        assert response.status == 202, await response.text()
        pipeline_id = (await response.json())["pipeline"]
        queue = runtime_of(client).queue
        deadline = time.monotonic() + 60
        while not (record := await asyncio.to_thread(queue.pipeline, pipeline_id)).state.is_terminal:
            assert time.monotonic() < deadline, record
            await asyncio.sleep(0.05)
        assert (record.state, record.event, record.concurrency_group) == (
            PipelineState.success, "schedule", "schedule:nightly")
        assert fake_engine.execs[-1].env["FORGECI_EVENT"] == "schedule" and fake_engine.execs[-1].env["FULL"] == "1"
        [listed] = (await (await client.get("/schedules")).json())["schedules"]
        assert listed["last_pipeline"]["id"] == pipeline_id and listed["last_pipeline"]["state"] == "success"
        assert listed["next_due"] == nightly.next_due(time.time())  # running by hand moves no due time

        response = await client.post("/schedules/weekly/run")
        assert response.status == 404 and (await response.json())["error"] == "not found"
        assert (await client.post("/schedules/nightly/run", json={"x": 1})).status == 400


async def test_a_push_to_the_branch_does_not_cancel_the_scheduled_pipeline(
        settings: Settings, make_local_repo: MakeRepo, fake_engine: FakeEngine) -> None:
    repo, sha = make_local_repo({".forgeci.toml": PIPELINE})
    fake_engine.on("nightly", Script(hang=True), Script())
    async with api_client(scheduled(settings, repo), ENV, workers=True, engine=fake_engine) as client:
        pipeline_id = (await (await client.post("/schedules/nightly/run")).json())["pipeline"]
        queue = runtime_of(client).queue
        deadline = time.monotonic() + 60
        while (await asyncio.to_thread(queue.pipeline, pipeline_id)).state is not PipelineState.running:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        payload = fixture_json("push.with-new-branch.json")
        payload["repository"]["clone_url"] = str(repo)
        payload.update(ref="refs/heads/main", after=sha)
        body = json.dumps(payload).encode()
        answer = await (await client.post("/webhooks/github", data=body, headers=github_headers("push", body))).json()
        assert "superseded_pipelines" not in answer
        await asyncio.sleep(0.5)
        assert (await asyncio.to_thread(queue.pipeline, pipeline_id)).state is PipelineState.running
        await client.post(f"/pipelines/{pipeline_id}/cancel")


def test_forgeci_schedules_lists_and_runs(settings: Settings, make_local_repo: MakeRepo,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    repo, _ = make_local_repo({".forgeci.toml": PIPELINE})
    with live_server(scheduled(settings, repo)) as server:
        url = ["--server", server.url]
        assert main(["schedules", *url]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["NAME", "CRON", "TZ", "NEXT", "LAST", "REPO", "REF"]
        assert lines[1].startswith("nightly  0 3 * * *  UTC  in ") and lines[1].endswith(" main")
        assert main(["schedules", "--run", "nightly", *url]) == 0
        assert capsys.readouterr().out.startswith("schedule nightly: pipeline 1 started: ")
        assert main(["schedules", "--json", *url]) == 0
        assert json.loads(capsys.readouterr().out)[0]["last_pipeline"]["id"] == 1
        assert main(["schedules", "--run", "weekly", *url]) == 2
        assert "no schedule 'weekly'" in capsys.readouterr().err
