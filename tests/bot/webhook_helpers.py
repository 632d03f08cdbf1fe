"""Shared by the webhook and status tests: signing, the real app on a private data dir, a fake forge API."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bot.app import create_app
from bot.keys import RUNTIME
from config.settings import Settings
from runner.engine import Engine
from runner.models import PipelineRecord, PipelineState
from runner.planner import Planner
from runner.queue import Queue
from runner.runtime import Runtime
from tests.fake_engine import FakeEngine

# Real GitHub deliveries (octokit/webhooks payload examples, MIT), copied from the team's shared fixtures.
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "github"
GITHUB_SECRET = "gh-webhook-secret"
GITEA_SECRET = "gitea-webhook-secret"
GITLAB_SECRET = "gitlab-webhook-token"
ENV = {
    "FORGECI_GITHUB_WEBHOOK_SECRET": GITHUB_SECRET,
    "FORGECI_GITEA_WEBHOOK_SECRET": GITEA_SECRET,
    "FORGECI_GITLAB_WEBHOOK_SECRET": GITLAB_SECRET,
}
PUBLIC_URL = "https://ci.example.test"


def fixture_body(name: str) -> bytes:
    path = FIXTURES / name
    if not path.is_file():
        pytest.fail(f"missing fixture {path}: tests/fixtures/github is part of the repository")
    return path.read_bytes()


def fixture_json(name: str) -> dict[str, Any]:
    return json.loads(fixture_body(name))


def sign(body: bytes, secret: str = GITHUB_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github_headers(event: str, body: bytes, *, delivery: str | None = None, secret: str = GITHUB_SECRET,
                   content_type: str = "application/json") -> dict[str, str]:
    return {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
            "X-Hub-Signature-256": sign(body, secret), "Content-Type": content_type}


async def push_repo(client: TestClient, repo: Path, sha: str) -> int:
    """The real push fixture (a new branch `main`) pointed at a local repository; the pipeline it made."""
    payload = fixture_json("push.with-new-branch.json")
    payload["repository"]["clone_url"] = str(repo)
    payload.update(ref="refs/heads/main", after=sha)
    body = json.dumps(payload).encode()
    response = await client.post("/webhooks/github", data=body, headers=github_headers("push", body))
    assert response.status == 202, await response.text()
    [pipeline_id] = (await response.json())["pipelines"]
    return int(pipeline_id)


def gitea_headers(event: str, body: bytes, *, delivery: str | None = None, secret: str = GITEA_SECRET,
                  forgejo: bool = False) -> dict[str, str]:
    prefix = "X-Forgejo" if forgejo else "X-Gitea"
    return {f"{prefix}-Event": event, f"{prefix}-Delivery": delivery or str(uuid.uuid4()),
            f"{prefix}-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
            "Content-Type": "application/json"}


def gitlab_headers(event: str, *, delivery: str | None = None, token: str = GITLAB_SECRET) -> dict[str, str]:
    return {"X-Gitlab-Event": event, "X-Gitlab-Token": token, "X-Gitlab-Event-UUID": delivery or str(uuid.uuid4()),
            "Content-Type": "application/json"}


def form_body(payload: bytes) -> bytes:
    return urlencode({"payload": payload.decode()}).encode()


def quick_settings(shared_dir: Path, **changes: Any) -> Settings:
    """Defaults on a private data dir (open_client runs them on the fake engine)."""
    base = Settings.default()
    server = dataclasses.replace(base.server, public_url=PUBLIC_URL)
    settings = dataclasses.replace(base, data_dir=shared_dir / "data", server=server)
    for section, values in changes.items():
        settings = dataclasses.replace(settings, **{section: dataclasses.replace(getattr(settings, section), **values)})
    return settings


async def open_client(settings: Settings, environ: Mapping[str, str] = ENV, *, workers: bool = False,
                      engine: Engine | None = None) -> TestClient[web.Request, web.Application]:
    """A test client of the whole app on `engine` (a fresh fake one by default)."""
    app = create_app(settings, dict(environ), workers=workers, engine=engine or FakeEngine())
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


# The one-job pipeline the tests without a fetch plan their deliveries with (see plan_here).
ONE_JOB = '[[steps]]\nname = "test"\nrun = "true"\n'


def queue_of(source: TestClient[web.Request, web.Application] | Runtime | Queue) -> Queue:
    if isinstance(source, Queue):
        return source
    if isinstance(source, TestClient):
        return source.app[RUNTIME].queue
    return source.queue


async def planned_jobs(source: TestClient[web.Request, web.Application] | Runtime | Queue, pipeline_id: int,
                       timeout: float = 30.0) -> list[int]:
    """The jobs of a delivery's pipeline once the coordinator's planner wrote them (the pipeline left
    `planning`); with workers running. Fails naming the pipeline's state and error when it never does."""
    queue = queue_of(source)
    deadline = time.monotonic() + timeout
    while (record := await asyncio.to_thread(queue.pipeline, pipeline_id)).state is PipelineState.planning:
        if time.monotonic() > deadline:
            raise AssertionError(f"pipeline {pipeline_id} still planning after {timeout}s: {record.error}")
        await asyncio.sleep(0.02)
    return list(record.job_ids)


class FileAt:
    """Stands in for the planner's mirror: every repository holds `text` as its .forgeci.toml at the sha it is
    asked for. The tests' payloads name github.com and friends, which a test never fetches."""

    def __init__(self, text: str) -> None:
        self.text = text

    async def resolve(self, repo: str, ref: str, sha: str | None, log: Callable[[str], None]) -> str:
        return sha or "f" * 40

    async def read_file(self, repo: str, sha: str, path: str) -> str | None:
        return self.text


async def plan_here(client: TestClient[web.Request, web.Application], pipeline_id: int,
                    text: str = ONE_JOB) -> list[int]:
    """Plan a delivery's pipeline as the coordinator does (planner, queue, job control's events), with `text` as
    its file instead of a fetch: for tests without workers, which move its jobs by hand. Its job ids."""
    runtime: Runtime = client.app[RUNTIME]
    planner = Planner(runtime.queue, FileAt(text), max_retries=0)  # type: ignore[arg-type]  # duck-typed mirror
    planner.on_planned = runtime.control.planned
    record: PipelineRecord = await asyncio.to_thread(runtime.queue.pipeline, pipeline_id)
    result = await planner.plan(record)
    assert result is not None, f"pipeline {pipeline_id} was not planned: {runtime.queue.pipeline(pipeline_id)}"
    return result[0]


@dataclass
class Recorded:
    """One request the fake forge received."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any
    at: float


Responder = Callable[[Recorded], web.Response | None]


@dataclass
class FakeForge:
    """A local HTTP server standing in for a forge's API: records every request, answers as scripted.

    `script` is consulted first, in order: each entry answers one matching request (or returns None to pass);
    anything unscripted gets 201 {}.
    """

    requests: list[Recorded] = field(default_factory=list)
    script: list[Responder] = field(default_factory=list)
    status_delay: float = 0.0  # seconds each status post takes to answer: a slow forge
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._handle)  # every path, a newline too
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        recorded = Recorded(request.method, request.path, dict(request.headers), body, time.time())
        self.requests.append(recorded)
        if self.status_delay and "/statuses/" in request.path:
            await asyncio.sleep(self.status_delay)
        for responder in list(self.script):
            response = responder(recorded)
            if response is not None:
                self.script.remove(responder)
                return response
        return web.json_response({}, status=201)

    def statuses(self) -> list[Recorded]:
        return [r for r in self.requests if "/statuses/" in r.path]

    async def wait_statuses(self, count: int, timeout: float = 20.0) -> list[Recorded]:
        deadline = time.monotonic() + timeout
        while len(self.statuses()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.statuses())} status posts after {timeout}s, wanted {count}: "
                                     f"{[r.body for r in self.statuses()]}")
            await asyncio.sleep(0.02)
        return self.statuses()


@pytest.fixture
async def fake_forge() -> AsyncIterator[FakeForge]:
    forge = FakeForge()
    await forge.start()
    yield forge
    await forge.stop()


def answer_once(path_part: str, status: int, body: Any = None, headers: Mapping[str, str] | None = None,
                method: str = "POST") -> Responder:
    """A scripted answer for the next request whose path contains `path_part`."""

    def respond(recorded: Recorded) -> web.Response | None:
        if recorded.method != method or path_part not in recorded.path:
            return None
        return web.json_response(body if body is not None else {"message": f"scripted {status}"}, status=status,
                                 headers=dict(headers or {}))

    return respond
