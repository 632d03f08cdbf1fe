"""The submit forms' inputs: GET /inputs (what the last planned pipeline of a ref declares) and the dashboard's
submit page, with a field per declared input, or KEY=VALUE lines when the pipeline file is not known."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from config.settings import Settings
from tests.bot.api_helpers import api_client, runtime_of
from tests.bot.test_inputs import DECLARED

MakeRepo = Callable[..., tuple[Path, str]]


async def test_get_inputs_says_what_the_last_planned_pipeline_of_the_ref_declares(
        settings: Settings, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": DECLARED})
    async with api_client(settings) as client:
        unknown = await (await client.get("/inputs", params={"repo": str(repo), "ref": "main"})).json()
        assert unknown == {"known": False, "pipeline": None, "inputs": {}}
        submitted = await client.post("/jobs/submit", json={"repo": str(repo), "ref": "main",
                                                            "inputs": {"target": "prod"}})
        assert submitted.status == 201
        for ref in ("main", "refs/heads/main"):
            known = await (await client.get("/inputs", params={"repo": str(repo), "ref": ref})).json()
            assert known["known"] and known["pipeline"] == (await submitted.json())["pipeline"]
            assert known["inputs"] == {
                "target": {"description": "where to deploy", "default": None, "choices": ["staging", "prod"],
                           "required": True},
                "level": {"description": "", "default": "info", "choices": [], "required": False}}
        other = await (await client.get("/inputs", params={"repo": str(repo), "ref": "dev"})).json()
        assert other["known"] is False
        assert (await client.get("/inputs", params={"repo": str(repo)})).status == 400


def csrf_in(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no form"
    return match[1]


async def test_the_dashboard_form_shows_declared_inputs_and_the_server_s_objections(
        settings: Settings, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": DECLARED})
    async with api_client(settings) as client:
        html = await (await client.get("/dashboard/submit")).text()
        assert '<textarea id="inputs" name="inputs"' in html  # nothing known: plain KEY=VALUE lines
        csrf = csrf_in(html)
        base = {"csrf": csrf, "repo": str(repo), "ref": "main"}
        looked = await (await client.post("/dashboard/submit", data={**base, "action": "look"})).text()
        assert "the pipeline file of this ref is not known yet" in looked

        first = await client.post("/dashboard/submit", data={**base, "action": "submit", "inputs": "target=prod\n"},
                                  allow_redirects=False)
        assert first.status == 303 and first.headers["Location"] == "/dashboard/pipelines/1"
        page = await (await client.get("/dashboard/submit", params={"repo": str(repo), "ref": "main"})).text()
        assert '<select id="input-target" name="input.target">' in page and "<option>prod</option>" in page
        assert 'name="input.level" value="info"' in page and "where to deploy" in page

        refused = await client.post("/dashboard/submit", data={**base, "action": "submit", "input.target": "qa"})
        assert refused.status == 400
        assert "inputs.target: expected one of &#39;staging&#39;, &#39;prod&#39;, got &#39;qa&#39;" in await refused.text()
        done = await client.post("/dashboard/submit", data={**base, "action": "submit", "input.target": "staging",
                                                           "input.level": "debug"}, allow_redirects=False)
        assert done.status == 303
        pipeline_id = int(done.headers["Location"].rsplit("/", 1)[1])
        job = runtime_of(client).queue.jobs_of_pipeline(pipeline_id)[0]
        assert (job.spec.env["INPUT_TARGET"], job.spec.env["INPUT_LEVEL"]) == ("staging", "debug")

        bad = await client.post("/dashboard/submit", data={**base, "repo": "", "action": "submit"})
        assert bad.status == 400 and "repo" in await bad.text()
        forged = await client.post("/dashboard/submit", data={**base, "csrf": "0" * 32, "action": "submit"})
        assert forged.status == 403
