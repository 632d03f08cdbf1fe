"""Fixtures and helpers for the API, SSE, auth, metrics, dashboard, client and CLI tests."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bot.app import create_app
from bot.keys import RUNTIME, STREAM_TIMING, StreamTiming
from config.settings import Settings
from runner.engine import Engine
from runner.layout import DataLayout
from runner.logs import JobLog, Masker
from runner.models import JobSpec, JobState
from runner.queue import Queue
from runner.runtime import Runtime, default_engine
from tests.fake_engine import FakeEngine

T = TypeVar("T")
TOKEN = "s3cret-token-for-tests-0123456789abcdef"


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    """The settings of API tests (the fake engine's, in tests/bot)."""
    return settings


def podman_engine(settings: Settings) -> Engine:
    """The real rootless Podman engine, for the end-to-end tests (the helpers default to a fresh fake)."""
    return default_engine(settings, DataLayout(settings.data_dir))


def with_server(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, server=dataclasses.replace(settings.server, **changes))


@asynccontextmanager
async def api_client(settings: Settings, environ: Mapping[str, str] | None = None, *, workers: bool = False,
                     timing: StreamTiming | None = None, engine: Engine | None = None) -> AsyncIterator[TestClient]:
    """An aiohttp test client of the whole app (real runtime: SQLite queue, logs; no workers unless asked), on
    `engine` (a fresh fake one by default)."""
    app = create_app(settings, dict(environ or {}), workers=workers, engine=engine or FakeEngine())
    if timing is not None:
        app[STREAM_TIMING] = timing
    async with TestClient(TestServer(app)) as client:
        yield client


def runtime_of(client: TestClient) -> Runtime:
    return client.server.app[RUNTIME]


def enqueue(queue: Queue, repo: str = "https://git.example.test/acme/app.git", ref: str = "main", **kw: Any) -> int:
    return queue.enqueue(JobSpec(repo=repo, ref=ref, **kw))


def finish(queue: Queue, job_id: int, state: JobState | str = JobState.success,
           steps: tuple[tuple[str, str], ...] = (("build", "success"),)) -> None:
    """Run a queued job through the queue by hand (claim, steps, complete), as a runner would."""
    claimed = queue.claim("test-runner", 60)
    assert claimed is not None and claimed.id == job_id, f"expected to claim job {job_id}, got {claimed}"
    for index, (name, step_state) in enumerate(steps):
        queue.start_step(job_id, index, name)
        queue.finish_step(job_id, index, step_state, 0 if step_state == "success" else 1)
    queue.complete(job_id, state, runner_id="test-runner")


def write_log(runtime: Runtime, job_id: int, lines: list[str], step: str = "build") -> JobLog:
    """Open the job's log (publishing to the hub like a runner) and write `lines`; the caller closes it."""
    log = JobLog(runtime.layout.log_file(job_id), job_id, runtime.hub, Masker.empty())
    if lines:
        log.write(step, "stdout", "".join(f"{line}\n" for line in lines).encode())
    return log


def parse_sse(text: str) -> list[dict[str, str]]:
    """Events of an SSE body: dicts of their fields (comments and the retry hint left out)."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            fields[key] = value[1:] if value.startswith(" ") else value
        if "data" in fields:
            events.append(fields)
    return events


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """The app on a real TCP port, in its own thread and event loop (for the CLI, httpx and the browser)."""

    def __init__(self, settings: Settings, environ: Mapping[str, str], workers: bool,
                 timing: StreamTiming | None, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or FakeEngine()
        self.environ = dict(environ)
        self.workers = workers
        self.timing = timing
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name="live-server", daemon=True)

    @property
    def runtime(self) -> Runtime:
        assert self.app is not None
        return self.app[RUNTIME]

    def call(self, work: Callable[[], Awaitable[T]] | Awaitable[T], timeout: float = 60) -> T:
        """Run a coroutine on the server's loop (the log hub and event bus belong to it) and wait for it."""
        coro = work() if callable(work) else work
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return future.result(timeout)

    def start(self) -> None:
        self._thread.start()

        async def up() -> None:
            self.app = create_app(self.settings, self.environ, workers=self.workers, engine=self.engine)
            if self.timing is not None:
                self.app[STREAM_TIMING] = self.timing
            self._runner = web.AppRunner(self.app, shutdown_timeout=2)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        self.call(up)

    def stop(self) -> None:
        if self._runner is not None:
            self.call(self._runner.cleanup)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@contextmanager
def live_server(settings: Settings, environ: Mapping[str, str] | None = None, *, workers: bool = False,
                timing: StreamTiming | None = None, engine: Engine | None = None) -> Iterator[LiveServer]:
    server = LiveServer(settings, environ or {}, workers, timing, engine)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class DroppingProxy:
    """A TCP proxy that cuts every connection after `budget` bytes from the server: a flaky network, on purpose."""

    def __init__(self, target_port: int, budget: int) -> None:
        self.target_port = target_port
        self.budget = budget
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, limit: int | None) -> None:
            sent = 0
            try:
                while data := await src.read(4096):
                    if limit is not None and sent + len(data) > limit:
                        dst.write(data[: max(0, limit - sent)])
                        await dst.drain()
                        break
                    sent += len(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                for w in (writer, up_writer):
                    w.close()

        await asyncio.gather(pump(reader, up_writer, None), pump(up_reader, writer, self.budget))


def wait_until(condition: Callable[[], bool], timeout: float = 20, interval: float = 0.05) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


async def async_wait_until(condition: Callable[[], bool], timeout: float = 20, interval: float = 0.05) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


