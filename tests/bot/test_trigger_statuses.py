"""Commit statuses of jobs and pipelines the filters ruled out: `success`, saying why they were skipped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.bot.test_pipeline_statuses import CONTEXT, finished, start
from tests.bot.test_trigger_paths import FILTERED, ZEROS, commit
from tests.bot.test_trigger_paths import push as push_change
from tests.bot.webhook_helpers import FakeForge, fake_forge

__all__ = ["fake_forge", "start"]  # fixtures
MakeRepo = Callable[..., tuple[Path, str]]


async def test_a_skipped_job_and_a_skipped_pipeline_say_why(start: Callable[..., Any], fake_forge: FakeForge,
                                                             make_local_repo: MakeRepo) -> None:
    repo, first = make_local_repo({".forgeci.toml": FILTERED, "src/app.py": "v1\n"})
    docs = commit(repo, {"docs/guide.md": "v2\n"})
    client = await start()
    pipeline_id = await push_change(client, repo, "refs/heads/main", first, docs)
    posts = await finished(client, fake_forge, pipeline_id)
    src = posts[f"{CONTEXT}/src"]
    assert [(p["state"], p["description"]) for p in src] == [("success", "Skipped: no change under src/**")]
    assert posts[f"{CONTEXT}/all"][-1]["description"].startswith("Passed in ")
    assert posts[CONTEXT][-1]["description"].startswith("Passed: 1 job, 2 skipped")

    ruled_out = commit(repo, {".forgeci.toml": 'events = ["pull_request"]\n' + FILTERED})
    fake_forge.requests.clear()
    pipeline_id = await push_change(client, repo, "refs/heads/main", ZEROS, ruled_out)
    posts = await finished(client, fake_forge, pipeline_id)
    assert posts[CONTEXT][-1] == {**posts[CONTEXT][-1], "state": "success",
                                  "description": "Skipped: the pipeline runs on pull_request events, not push"}
    response = await client.get(f"/pipelines/{pipeline_id}")
    assert (await response.json())["state"] == "skipped"  # the forge has no skipped status: success says why


async def test_a_pipeline_whose_jobs_are_all_ruled_out_posts_success(start: Callable[..., Any],
                                                                    fake_forge: FakeForge,
                                                                    make_local_repo: MakeRepo) -> None:
    repo, first = make_local_repo({".forgeci.toml": FILTERED.split("[jobs.all]")[0], "src/app.py": "v1\n"})
    docs = commit(repo, {"docs/guide.md": "v2\n"})
    client = await start()
    pipeline_id = await push_change(client, repo, "refs/heads/main", first, docs)
    posts = await finished(client, fake_forge, pipeline_id)
    assert (posts[CONTEXT][-1]["state"], posts[CONTEXT][-1]["description"]) == (
        "success", "Skipped: no change under src/**")
    assert (await (await client.get(f"/pipelines/{pipeline_id}")).json())["state"] == "skipped"
