"""Two whole coordinators (the app: webhooks, API, SSE, workers, status reporter, notifier) on one PostgreSQL queue,
each with its own data dir and the fake engine: commit statuses are posted in order and notifications once, whichever
coordinator ran which job, also after the coordinator holding those singletons stops; a follower of a job's log and
of /events on one coordinator sees a job run on the other."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bot.keys import RUNTIME
from config.settings import Settings, parse_settings
from runner.cluster import NOTIFY, STATUS
from runner.models import JobSpec
from tests.bot.api_helpers import parse_sse
from tests.bot.notify_helpers import HOOK_SECRET, Receiver
from tests.bot.webhook_helpers import ENV, PUBLIC_URL, FakeForge, fake_forge, open_client, push_repo
from tests.fake_engine import FakeEngine, Script

__all__ = ["fake_forge"]  # a fixture

Client = TestClient[web.Request, web.Application]
MakeRepo = Callable[..., tuple[Path, str]]
CONTEXT = "forgeci/ci"
# Job a runs on coordinator a, job b on coordinator b (their runner.labels): every pipeline's changes come from both.
TWO_JOBS = ('[jobs.a]\nruns_on = ["node-a"]\nsteps = [{ name = "a", run = "step-a" }]\n'
            '[jobs.b]\nneeds = ["a"]\nruns_on = ["node-b"]\nsteps = [{ name = "b", run = "step-b" }]\n')
NOTIFY_TOML = '''
[[notify]]
kind = "webhook"
name = "audit-hook"
url_env = "FORGECI_HOOK_URL"
secret_env = "FORGECI_HOOK_SECRET"
on = ["success", "failure"]
backoff = 0.2
'''


@pytest.fixture
async def coordinators(settings: Settings, pg_url: str, fake_forge: FakeForge, tmp_path: Path
                       ) -> AsyncIterator[Callable[..., Any]]:
    clients: list[Client] = []
    receiver = await Receiver().start()

    async def start(name: str, *, workers: bool = True, engine: FakeEngine | None = None,
                    label: str | None = None) -> Client:
        parsed = parse_settings(NOTIFY_TOML, "forgeci.toml")
        mine = dataclasses.replace(
            settings, data_dir=tmp_path / name, notify=parsed.notify,
            github=dataclasses.replace(settings.github, api_url=fake_forge.url),
            server=dataclasses.replace(settings.server, public_url=PUBLIC_URL),
            runner=dataclasses.replace(settings.runner, labels=(label or f"node-{name}",)),
            queue=dataclasses.replace(settings.queue, url=pg_url, max_concurrent=4, lease_seconds=3.0, cancel_superseded=False))
        env = {**ENV, "FORGECI_GITHUB_TOKEN": "ghp-test-token", "FORGECI_HOOK_URL": f"{receiver.url}/hook",
               "FORGECI_HOOK_SECRET": HOOK_SECRET}
        fake = engine or FakeEngine()
        fake.default = Script(lines=["working"], delay=0.3)  # long enough for both coordinators to take jobs
        client = await open_client(mine, env, workers=workers, engine=fake)
        clients.append(client)
        return client

    start.receiver = receiver  # type: ignore[attr-defined]
    yield start
    for client in clients:
        await client.close()
    await receiver.stop()




async def until(predicate: Callable[[], Any], timeout: float, what: Callable[[], str] | str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what() if callable(what) else what}")
        await asyncio.sleep(0.05)


def holder(clients: list[Client], singleton: str) -> Client | None:
    held = [c for c in clients if c.app[RUNTIME].cluster.singletons.holds(singleton)]
    assert len(held) <= 1, f"{singleton} held by {len(held)} coordinators"
    return held[0] if held else None


def by_sha_context(forge: FakeForge) -> dict[tuple[str, str], list[dict[str, Any]]]:
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for post in forge.statuses():
        found.setdefault((post.path.rsplit("/", 1)[-1], post.body["context"]), []).append(post.body)
    return found


async def run_pipelines(clients: list[Client], forge: FakeForge, receiver: Receiver, make_repo: MakeRepo,
                        count: int, tag: str) -> dict[int, str]:
    """Push `count` two-job pipelines (each its own repository and sha) round-robin to the coordinators; wait until
    every one ended, its statuses are final and its notification arrived. {pipeline id: sha}."""
    made: dict[int, str] = {}
    for i in range(count):
        repo, sha = make_repo({".forgeci.toml": TWO_JOBS, "id": f"{tag}-{i}\n"})
        made[await push_repo(clients[i % len(clients)], repo, sha)] = sha
    queue = clients[0].app[RUNTIME].queue

    def done() -> bool:
        ended = all(queue.pipeline(p).state.is_terminal for p in made)
        posts = by_sha_context(forge)
        final = all(posts.get((sha, CONTEXT), [{}])[-1].get("state") == "success" for sha in made.values())
        told = {json.loads(r.body)["pipeline"]["id"] for r in receiver.of("/hook")} >= set(made)
        return ended and final and told

    await until(done, 90, lambda: f"{[queue.pipeline(p).state for p in made]} {len(receiver.of('/hook'))} hooks")
    return made


def check_statuses(forge: FakeForge, shas: set[str]) -> None:
    """Per commit and context: pending updates, then one final success, never pending after the end."""
    for (sha, context), posts in by_sha_context(forge).items():
        if sha not in shas:
            continue
        states = [p["state"] for p in posts]
        # A coordinator taking the reporter over posts the current status of what was offered just before: the
        # final state may come twice, never a pending one after it.
        end = states.index("success")
        assert set(states[end:]) == {"success"} and set(states[:end]) <= {"pending"}, (sha, context, states)
    contexts = {(sha, context) for sha, context in by_sha_context(forge) if sha in shas}
    assert contexts == {(sha, c) for sha in shas for c in (CONTEXT, f"{CONTEXT}/a", f"{CONTEXT}/b")}


@pytest.mark.slow
async def test_statuses_in_order_and_notifications_once_across_two_coordinators_and_a_takeover(
        coordinators: Callable[..., Any], fake_forge: FakeForge, make_local_repo: MakeRepo) -> None:
    receiver: Receiver = coordinators.receiver  # type: ignore[attr-defined]
    clients = [await coordinators("a"), await coordinators("b")]
    await until(lambda: holder(clients, STATUS) and holder(clients, NOTIFY), 20, "the singletons held")
    first = await run_pipelines(clients, fake_forge, receiver, make_local_repo, 8, "one")
    queue = clients[0].app[RUNTIME].queue
    for pipeline_id in first:
        jobs = [queue.get(j) for j in queue.pipeline(pipeline_id).job_ids]
        assert len(jobs) == 2, [(j.id, j.name, j.state, j.runner_id) for j in jobs]
        a_job, b_job = jobs
        assert (a_job.runner_id or "").startswith(clients[0].app[RUNTIME].pool.orphan_prefix + "/")
        assert (b_job.runner_id or "").startswith(clients[1].app[RUNTIME].pool.orphan_prefix + "/")
    terms = {name: [c.app[RUNTIME].cluster.singletons.leaderships[name].terms for c in clients]
             for name in (STATUS, NOTIFY)}
    print(f"lock terms per coordinator: {terms}")
    check_statuses(fake_forge, set(first.values()))
    hooks = [json.loads(r.body)["pipeline"]["id"] for r in receiver.of("/hook")]
    assert sorted(hooks) == sorted(first)  # each notification once

    # The coordinator holding the status and notify singletons stops: the other takes them and goes on.
    gone = holder(clients, STATUS)
    assert gone is not None
    label = gone.app[RUNTIME].settings.runner.labels[0]
    clients.remove(gone)
    await gone.close()
    await until(lambda: holder(clients, STATUS) and holder(clients, NOTIFY), 20, "the singletons moved")
    clients.append(await coordinators("c", label=label))  # a new coordinator for the jobs of the one that went
    second = await run_pipelines(clients, fake_forge, receiver, make_local_repo, 4, "two")
    check_statuses(fake_forge, set(second.values()))
    hooks = [json.loads(r.body)["pipeline"]["id"] for r in receiver.of("/hook")]
    assert sorted(hooks) == sorted([*first, *second])


async def test_a_follower_on_one_coordinator_sees_the_log_and_events_of_a_job_run_on_the_other(
        coordinators: Callable[..., Any], make_local_repo: MakeRepo) -> None:
    engine = FakeEngine()
    a = await coordinators("a", workers=False)  # no workers: every job runs on b
    b = await coordinators("b", engine=engine)
    engine.on("make", Script(lines=[f"line {i}" for i in range(30)], interval=0.05))
    events = await a.get("/events")
    assert events.status == 200
    repo, _ = make_local_repo({"README": "x\n"})
    job_id = a.app[RUNTIME].queue.enqueue(JobSpec(repo=str(repo), ref="main",
                                                   pipeline={"steps": [{"name": "build", "run": "make"}]}))
    b.app[RUNTIME].pool.wake()  # the other coordinator's enqueue does not wake b's pool in-process
    response = await a.get(f"/jobs/logs?id={job_id}")
    assert response.status == 200
    text = await asyncio.wait_for(response.text(), 60)  # the stream ends with the job
    lines = [json.loads(e["data"]) for e in parse_sse(text) if e.get("event") is None and "data" in e]
    end = [json.loads(e["data"]) for e in parse_sse(text) if e.get("event") == "end"]
    assert [line["text"] for line in lines if line["stream"] == "stdout"] == [f"line {i}" for i in range(30)]
    assert [line["n"] for line in lines] == list(range(1, len(lines) + 1))
    assert end and end[0]["state"] == "success"
    assert b.app[RUNTIME].queue.get(job_id).runner_id.startswith(b.app[RUNTIME].pool.orphan_prefix)
    seen = b""
    deadline = time.monotonic() + 10
    while b'"state":"success"' not in seen and time.monotonic() < deadline:
        seen += await asyncio.wait_for(events.content.readany(), 10)
    states = [json.loads(e["data"])["state"] for e in parse_sse(seen.decode()) if e.get("event") == "job"
              and json.loads(e["data"])["job_id"] == job_id]
    assert "running" in states and states[-1] == "success"  # b's events, on a's /events
    events.close()
