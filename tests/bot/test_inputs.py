"""Inputs of a manual run: checked against the pipeline's [inputs] when the submit plans it (a 400 naming the
input), given to every job as INPUT_<KEY>; a webhook's pipeline gets the defaults."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from config.settings import Settings
from runner.models import PipelineState
from tests.bot.api_helpers import api_client, runtime_of
from tests.bot.webhook_helpers import ENV, fixture_json, github_headers
from tests.fake_engine import FakeEngine

MakeRepo = Callable[..., tuple[Path, str]]
DECLARED = '''
[inputs.target]
description = "where to deploy"
choices = ["staging", "prod"]
required = true

[inputs.level]
default = "info"

[[steps]]
name = "deploy"
run = "deploy"
'''


async def submit(client: TestClient, repo: Path, **inputs: Any) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"repo": str(repo), "ref": "main"}
    if inputs:
        body["inputs"] = inputs
    response = await client.post("/jobs/submit", json=body)
    return response.status, await response.json()


async def ran_env(client: TestClient, engine: FakeEngine, job_id: int, timeout: float = 60) -> dict[str, str]:
    queue = runtime_of(client).queue
    deadline = time.monotonic() + timeout
    while not (job := await asyncio.to_thread(queue.get, job_id)).state.is_terminal:
        assert time.monotonic() < deadline, f"job {job_id} still {job.state}"
        await asyncio.sleep(0.05)
    assert str(job.state) == "success", job.error
    [step] = [e for e in engine.execs if e.job_id == job_id]
    return step.env


async def test_a_missing_required_input_and_one_outside_its_choices_are_400s_naming_it(
        settings: Settings, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": DECLARED})
    async with api_client(settings) as client:
        status, body = await submit(client, repo)
        assert status == 400, body
        assert body["error"] == "invalid input" and body["detail"] == ["inputs: inputs.target: required input missing"]
        status, body = await submit(client, repo, target="qa")
        assert status == 400 and body["detail"] == ["inputs: inputs.target: expected one of 'staging', 'prod', "
                                                    "got 'qa'"]
        status, body = await submit(client, repo, target="prod", colour="red")
        assert status == 400 and "inputs.colour: unknown input (the pipeline declares target, level)" in body["detail"][0]
        status, body = await submit(client, repo, **{"bad name": "x"})
        assert status == 400 and "expected input names like LOG_LEVEL" in body["detail"][0]
        # The refused runs' pipelines ended with the reason; nothing of them is queued.
        records, _ = runtime_of(client).queue.list_pipelines()
        assert {r.state for r in records[:3]} == {PipelineState.error} and all(not r.job_ids for r in records)
        assert records[-1].error == "invalid inputs: inputs: inputs.target: required input missing"


async def test_given_inputs_and_defaults_reach_the_job(settings: Settings, make_local_repo: MakeRepo,
                                                       fake_engine: FakeEngine) -> None:
    repo, _ = make_local_repo({".forgeci.toml": DECLARED})
    async with api_client(settings, workers=True, engine=fake_engine) as client:
        status, body = await submit(client, repo, target="prod")
        assert status == 201, body
        env = await ran_env(client, fake_engine, body["id"])
        assert (env["INPUT_TARGET"], env["INPUT_LEVEL"], env["FORGECI_EVENT"]) == ("prod", "info", "manual")
        # A pipeline that declares nothing takes any key=value.
        plain, _ = make_local_repo({".forgeci.toml": '[[steps]]\nname = "x"\nrun = "x"\n'})
        status, body = await submit(client, plain, x="1", Other_Key="two")
        assert status == 201, body
        env = await ran_env(client, fake_engine, body["id"])
        assert (env["INPUT_X"], env["INPUT_OTHER_KEY"]) == ("1", "two")


async def test_a_webhook_pipeline_uses_the_defaults(settings: Settings, make_local_repo: MakeRepo,
                                                    fake_engine: FakeEngine) -> None:
    repo, sha = make_local_repo({".forgeci.toml": DECLARED})
    payload = fixture_json("push.with-new-branch.json")
    payload["repository"]["clone_url"] = str(repo)
    payload.update(ref="refs/heads/main", after=sha)
    body = json.dumps(payload).encode()
    async with api_client(settings, ENV, workers=True, engine=fake_engine) as client:
        response = await client.post("/webhooks/github", data=body, headers=github_headers("push", body))
        assert response.status == 202
        pipeline_id = (await response.json())["pipelines"][0]
        queue = runtime_of(client).queue
        deadline = time.monotonic() + 60
        while not (record := await asyncio.to_thread(queue.pipeline, pipeline_id)).job_ids:
            assert time.monotonic() < deadline and record.state is PipelineState.planning, record
            await asyncio.sleep(0.05)
        env = await ran_env(client, fake_engine, record.job_ids[0])
        assert env["INPUT_LEVEL"] == "info" and "INPUT_TARGET" not in env and env["FORGECI_EVENT"] == "push"
