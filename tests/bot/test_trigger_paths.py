"""Path filters against real git history, through pushed webhooks: the planner diffs the mirror (before..after, the
merge base of a new branch or a pull request) and plans the jobs the change does not touch `skipped`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bot.keys import RUNTIME
from config.settings import Settings
from runner import changes
from runner.models import Job, JobState
from tests.bot.webhook_helpers import ENV, fixture_json, github_headers, open_client
from tests.conftest import git
from tests.fake_engine import FakeEngine

Client = TestClient[web.Request, web.Application]
MakeRepo = Callable[..., tuple[Path, str]]
FILTERED = '''
[jobs.src]
paths = ["src/**"]
steps = [{ name = "build", run = "build-src" }]

[jobs.all]
steps = [{ name = "check", run = "check-all" }]

[jobs.code]
paths_ignore = ["docs/**", "*.md"]
steps = [{ name = "lint", run = "lint" }]
'''
ZEROS = "0" * 40


@pytest.fixture
async def client(settings: Settings, fake_engine: FakeEngine) -> AsyncIterator[Client]:
    client = await open_client(settings, ENV, workers=True, engine=fake_engine)
    yield client
    await client.close()


def commit(repo: Path, files: dict[str, str], message: str = "change") -> str:
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD")


async def deliver(client: Client, event: str, payload: dict[str, Any]) -> int:
    body = json.dumps(payload).encode()
    response = await client.post("/webhooks/github", data=body, headers=github_headers(event, body))
    assert response.status == 202, await response.text()
    return int((await response.json())["pipelines"][0])


async def push(client: Client, repo: Path, ref: str, before: str, after: str) -> int:
    payload = fixture_json("push.with-new-branch.json")
    payload["repository"].update(clone_url=str(repo), default_branch="main")
    payload.update(ref=ref, before=before, after=after)
    return await deliver(client, "push", payload)


async def pull_request(client: Client, repo: Path, number: int, head: str, base: str = "main") -> int:
    git(repo, "update-ref", f"refs/pull/{number}/head", head)
    payload = fixture_json("pull_request.opened.json")
    payload["repository"]["clone_url"] = str(repo)
    payload["number"] = number
    payload["pull_request"].update(number=number, draft=False)
    payload["pull_request"]["head"]["sha"] = head
    payload["pull_request"]["base"]["ref"] = base
    return await deliver(client, "pull_request", payload)


async def ended(client: Client, pipeline_id: int, timeout: float = 60) -> dict[str, Job]:
    """The pipeline's jobs by name once it has ended."""
    queue = client.app[RUNTIME].queue
    deadline = time.monotonic() + timeout
    while not (record := await asyncio.to_thread(queue.pipeline, pipeline_id)).state.is_terminal:
        assert time.monotonic() < deadline, f"pipeline {pipeline_id} is still {record.state}: {record.error}"
        await asyncio.sleep(0.05)
    return {job.name or "": job for job in await asyncio.to_thread(queue.jobs_of_pipeline, pipeline_id)}


def states(jobs: dict[str, Job]) -> dict[str, str]:
    return {name: str(job.state) for name, job in jobs.items()}


async def test_a_docs_push_skips_the_src_job_and_a_src_push_runs_it(client: Client, make_local_repo: MakeRepo,
                                                                   fake_engine: FakeEngine) -> None:
    repo, first = make_local_repo({".forgeci.toml": FILTERED, "src/app.py": "v1\n", "docs/guide.md": "v1\n"})
    docs = commit(repo, {"docs/guide.md": "v2\n", "README.md": "hello\n"})
    jobs = await ended(client, await push(client, repo, "refs/heads/main", first, docs))
    assert states(jobs) == {"src": "skipped", "all": "success", "code": "skipped"}
    assert jobs["src"].error == "skipped: no change under src/**"
    assert jobs["code"].error == "skipped: every change is under paths_ignore (docs/**, *.md)"
    assert jobs["src"].started_at is None  # ruled out at planning: never claimed

    src = commit(repo, {"src/app.py": "v2\n", "docs/guide.md": "v3\n"})
    jobs = await ended(client, await push(client, repo, "refs/heads/main", docs, src))
    assert states(jobs) == {"src": "success", "all": "success", "code": "success"}
    assert [e.run for e in fake_engine.execs].count("build-src") == 1
    assert all(e.env["FORGECI_EVENT"] == "push" for e in fake_engine.execs)


async def test_a_pull_request_is_diffed_from_its_merge_base(client: Client, make_local_repo: MakeRepo,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """main moved on (touching src/) since the branch left it several commits back: only the branch's own docs
    changes count, so the src job is skipped. A diff against main's tip would have run it. The mirror's history
    is deepened round by round until it holds the merge base (rounds of 1 and 2 commits here, then all)."""
    monkeypatch.setattr(changes, "DEPTHS", (1, 2, 2**31 - 1))
    repo, first = make_local_repo({".forgeci.toml": FILTERED, "src/app.py": "v1\n", "docs/guide.md": "v1\n"})
    for i in range(3):
        commit(repo, {"src/app.py": f"main {i}\n"}, f"main {i}")
    git(repo, "checkout", "-q", "-b", "feature", first)
    head = ""
    for i in range(4):
        head = commit(repo, {f"docs/page{i}.md": "x\n"}, f"docs {i}")
    git(repo, "checkout", "-q", "main")
    jobs = await ended(client, await pull_request(client, repo, 7, head))
    assert states(jobs) == {"src": "skipped", "all": "success", "code": "skipped"}

    git(repo, "checkout", "-q", "feature")
    head = commit(repo, {"src/feature.py": "new\n"})
    git(repo, "checkout", "-q", "main")
    jobs = await ended(client, await pull_request(client, repo, 7, head))
    assert states(jobs) == {"src": "success", "all": "success", "code": "success"}


async def test_a_new_branch_compares_with_the_default_branch(client: Client, make_local_repo: MakeRepo) -> None:
    repo, first = make_local_repo({".forgeci.toml": FILTERED, "src/app.py": "v1\n", "docs/guide.md": "v1\n"})
    commit(repo, {"src/app.py": "v2\n"})  # on main, after the branch point: not the branch's change
    git(repo, "checkout", "-q", "-b", "topic", first)
    topic = commit(repo, {"docs/topic.md": "x\n"})
    jobs = await ended(client, await push(client, repo, "refs/heads/topic", ZEROS, topic))
    assert states(jobs)["src"] == "skipped"

    # An unreachable `before` (a force-push dropped it) compares with the default branch too.
    jobs = await ended(client, await push(client, repo, "refs/heads/topic", "1" * 40, topic))
    assert states(jobs)["src"] == "skipped"


async def test_unknown_changes_run_everything(client: Client, make_local_repo: MakeRepo) -> None:
    """The default branch's first push has nothing to compare with; a tag push has no path filters."""
    repo, first = make_local_repo({".forgeci.toml": FILTERED, "docs/guide.md": "v1\n"})
    jobs = await ended(client, await push(client, repo, "refs/heads/main", ZEROS, first))
    assert states(jobs) == {"src": "success", "all": "success", "code": "success"}
    git(repo, "tag", "v1")
    jobs = await ended(client, await push(client, repo, "refs/tags/v1", ZEROS, first))
    assert set(states(jobs).values()) == {str(JobState.success)}


async def api_state(client: Client, pipeline_id: int) -> str:
    response = await client.get(f"/pipelines/{pipeline_id}")
    assert response.status == 200, await response.text()
    return str((await response.json())["state"])


async def test_a_pipeline_ruled_out_by_its_events_skips_every_job(client: Client, make_local_repo: MakeRepo) -> None:
    repo, first = make_local_repo({".forgeci.toml": 'events = ["pull_request"]\n' + FILTERED})
    pipeline_id = await push(client, repo, "refs/heads/main", ZEROS, first)
    jobs = await ended(client, pipeline_id)
    assert {job.error for job in jobs.values()} == {"skipped: the pipeline runs on pull_request events, not push"}
    assert await api_state(client, pipeline_id) == "skipped"
    response = await client.get("/pipelines", params={"status": "skipped"})
    assert response.status == 200, await response.text()
    assert [p["id"] for p in (await response.json())["pipelines"]] == [pipeline_id]


async def test_a_pipeline_whose_jobs_are_all_ruled_out_ends_skipped(client: Client, make_local_repo: MakeRepo) -> None:
    """Every job ruled out by its own filter: `skipped`; some ruled out and the others run: `success`."""
    only_src = FILTERED.split("[jobs.all]")[0]
    repo, first = make_local_repo({".forgeci.toml": only_src, "src/app.py": "v1\n"})
    docs = commit(repo, {"docs/guide.md": "v2\n"})
    pipeline_id = await push(client, repo, "refs/heads/main", first, docs)
    assert states(await ended(client, pipeline_id)) == {"src": "skipped"}
    assert await api_state(client, pipeline_id) == "skipped"

    commit(repo, {".forgeci.toml": FILTERED})
    docs = commit(repo, {"docs/guide.md": "v3\n"})
    pipeline_id = await push(client, repo, "refs/heads/main", git(repo, "rev-parse", "HEAD~1"), docs)
    assert states(await ended(client, pipeline_id)) == {"src": "skipped", "all": "success", "code": "skipped"}
    assert await api_state(client, pipeline_id) == "success"
