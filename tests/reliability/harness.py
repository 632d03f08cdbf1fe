"""The reliability suite's tools: `forgeci serve` as a process, a signed-webhook load generator, its ledger."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w

from runner.podman_user import PodmanUser
from tests.bot.webhook_helpers import fixture_json

REPO_ROOT = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = "reliability-webhook-secret-5f2a9c"
API_TOKEN = "reliability-api-token-7d41e0b8c3"
SECRET_ENV = {"FORGECI_GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET, "FORGECI_API_TOKEN": API_TOKEN}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll until `condition()` is truthy and return it; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(interval)


# -- forgeci.toml ------------------------------------------------------------------------------------------------


def write_config(path: Path, data_dir: Path, port: int, image: str, **sections: Mapping[str, object]) -> Path:
    """A forgeci.toml for a test server: loopback, no network for jobs, GitHub webhooks on; `sections` override."""
    doc: dict[str, Any] = {
        "data_dir": str(data_dir),
        "server": {"host": "127.0.0.1", "port": port},
        "queue": {"max_concurrent": 2},
        "runner": {"image": image, "network": "none", "step_timeout": "10m", "job_timeout": "20m"},
    }
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    path.write_text(tomli_w.dumps(doc))
    return path


# -- forgeci serve as a process ----------------------------------------------------------------------------------


class ServeProcess:
    """`forgeci serve` in a subprocess, its output in a file (never a pipe nobody reads: a full pipe blocks it)."""

    def __init__(self, config: Path, port: int, output: Path, env: Mapping[str, str] = SECRET_ENV) -> None:
        self.config = config
        self.port = port
        self.output = output
        self.env = dict(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 90) -> ServeProcess:
        self._offset = self.output.stat().st_size if self.output.exists() else 0
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "forgeci_cli", "--config", str(self.config), "serve"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO_ROOT,
                env={**os.environ, "FORGECI_LOG_LEVEL": "INFO", **self.env})

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"forgeci serve exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            return "listening on" in self.text(since_start=True)

        wait_for(up, timeout, "forgeci serve listening")
        return self

    def text(self, since_start: bool = False) -> str:
        """Everything the server(s) wrote to the output file (or only since the last start)."""
        data = self.output.read_bytes() if self.output.exists() else b""
        return data[self._offset if since_start else 0:].decode(errors="replace")

    def kill(self) -> None:
        """kill -9: no cleanup of any kind runs in the server."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout: float = 120) -> int:
        """SIGTERM, as systemd or `kill` sends it; the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Teardown: whatever state it is in, it goes (SIGTERM, then SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def request(self, method: str, path: str, body: object = None, token: str | None = API_TOKEN,
                timeout: float = 30) -> tuple[int, Any]:
        return http_json(method, self.url + path, body, token, timeout)


def http_json(method: str, url: str, body: object = None, token: str | None = None,
              timeout: float = 30) -> tuple[int, Any]:
    """One JSON request with urllib: (status, decoded body); an HTTP error status is returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


# -- what the senders were told: the ledger ------------------------------------------------------------------------


@dataclass
class Ledger:
    """Every delivery id, pipeline id and job id a sender got a 2xx for: the only record data loss is counted
    against. A delivery is answered with the pipelines it recorded (their jobs are planned after the answer)."""

    deliveries: dict[str, tuple[int, ...]] = field(default_factory=dict)  # delivery id -> its pipelines
    submitted: set[int] = field(default_factory=set)  # job ids from POST /jobs/submit answered 201
    unanswered: int = 0  # connection refused or reset, a timeout, or a non-2xx: a forge would redeliver those
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def delivered(self, delivery: str, pipeline_ids: list[int]) -> None:
        with self._lock:
            self.deliveries[delivery] = tuple(pipeline_ids)

    def submitted_job(self, job_id: int) -> None:
        with self._lock:
            self.submitted.add(job_id)

    def failed(self) -> None:
        with self._lock:
            self.unanswered += 1

    @property
    def pipelines(self) -> set[int]:
        with self._lock:
            return {p for ids in self.deliveries.values() for p in ids}

    @property
    def jobs(self) -> set[int]:
        """The jobs a submit was answered with (a delivery's are its pipelines': `delivered_jobs`)."""
        with self._lock:
            return set(self.submitted)


@dataclass(frozen=True)
class Loss:
    """Acknowledged data missing from the database afterwards (each must be 0)."""

    deliveries: int
    jobs: int
    acknowledged_deliveries: int
    acknowledged_jobs: int
    pipelines: int = 0
    acknowledged_pipelines: int = 0

    @property
    def total(self) -> int:
        return self.deliveries + self.pipelines + self.jobs

    def __str__(self) -> str:
        parts = []
        if self.acknowledged_deliveries:
            parts.append(f"{self.deliveries} of {self.acknowledged_deliveries:,} deliveries")
        if self.acknowledged_pipelines:
            parts.append(f"{self.pipelines} of {self.acknowledged_pipelines:,} pipelines")
        parts.append(f"{self.jobs} of {self.acknowledged_jobs:,} jobs")
        return ", ".join(parts)


def read_db(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """A query on the queue's database, read-only (the server may still run: WAL lets readers in)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def count_loss(ledger: Ledger, db: Path) -> Loss:
    """Count the acknowledged deliveries, pipelines and jobs that the database does not have."""
    stored_deliveries = {row[0] for row in read_db(db, "SELECT delivery_id FROM deliveries WHERE forge = 'github'")}
    stored_pipelines = {row[0] for row in read_db(db, "SELECT id FROM pipelines")}
    stored_jobs = {row[0] for row in read_db(db, "SELECT id FROM jobs")}
    jobs, pipelines = ledger.jobs, ledger.pipelines
    return Loss(
        deliveries=len(set(ledger.deliveries) - stored_deliveries), jobs=len(jobs - stored_jobs),
        acknowledged_deliveries=len(ledger.deliveries), acknowledged_jobs=len(jobs),
        pipelines=len(pipelines - stored_pipelines), acknowledged_pipelines=len(pipelines),
    )


def planned(db: Path, pipeline_ids: Iterable[int], timeout: float = 60) -> list[int]:
    """The jobs of acknowledged pipelines once the coordinator planned them all (none left `planning`)."""
    ids = sorted(set(pipeline_ids))
    marks = ", ".join("?" * len(ids))

    def done() -> bool:
        rows = read_db(db, f"SELECT count(*) FROM pipelines WHERE id IN ({marks}) AND state != 'planning'",
                       tuple(ids))
        return rows == [(len(ids),)]

    wait_for(done, timeout, f"pipelines {ids} planned")
    return [row[0] for row in read_db(db, f"SELECT id FROM jobs WHERE pipeline_id IN ({marks}) ORDER BY id",
                                      tuple(ids))]


def delivered_jobs(db: Path, ledger: Ledger) -> set[int]:
    """The jobs planned for the pipelines the deliveries were answered with."""
    pipelines = ledger.pipelines
    return {row[0] for row in read_db(db, "SELECT id, pipeline_id FROM jobs WHERE pipeline_id IS NOT NULL")
            if row[1] in pipelines} if pipelines else set()


@dataclass(frozen=True)
class JobRow:
    id: int
    state: str
    attempts: int
    queued_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    ref: str


def jobs_of(db: Path, ids: set[int] | None = None) -> dict[int, JobRow]:
    rows = read_db(db, "SELECT id, state, attempts, queued_at, started_at, finished_at, error, ref FROM jobs")
    return {row[0]: JobRow(*row) for row in rows if ids is None or row[0] in ids}


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (p95 of 1,000 values is the 950th smallest)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def plural(count: int, noun: str) -> str:
    """`1 job`, `2 jobs`, `3 deliveries`."""
    if count == 1:
        return f"{count:,} {noun}"
    return f"{count:,} {noun[:-1] + 'ies' if noun.endswith('y') and noun[-2:-1] not in 'aeiou' else noun + 's'}"


def summary(values: list[float]) -> str:
    return (f"p50 {statistics.median(values):.2f}s, p95 {percentile(values, 95):.2f}s, "
            f"max {max(values):.2f}s")


# -- signed GitHub deliveries -----------------------------------------------------------------------------------


def push_payload(clone_url: str, ref: str, sha: str) -> dict[str, Any]:
    """GitHub's real push delivery (the shared fixture), pointed at a repository the runner can clone."""
    payload = fixture_json("push.with-new-branch.json")
    payload["ref"] = ref
    payload["after"] = sha
    payload["repository"] = {**payload["repository"], "clone_url": clone_url}
    return payload


def signed(body: bytes, event: str, delivery: str, secret: str = WEBHOOK_SECRET) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-GitHub-Event": event, "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}


def deliver(url: str, payload: dict[str, Any], ledger: Ledger, event: str = "push") -> list[int]:
    """Post one signed delivery; its pipelines (recorded in the ledger) when answered 2xx: `planned` gives their
    jobs once the coordinator planned them."""
    body = json.dumps(payload).encode()
    delivery = str(uuid.uuid4())
    request = urllib.request.Request(f"{url}/webhooks/github", data=body, method="POST",
                                     headers=signed(body, event, delivery))
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    ledger.delivered(delivery, answer["pipelines"])
    return list(answer["pipelines"])


class WebhookLoad:
    """Signed push deliveries at a steady rate from a thread of its own, whatever state the server is in.

    Open loop: a delivery starts every 1/rate seconds (at most `connections` in flight), as forges send them,
    and each answer is recorded in the ledger (2xx) or counted as unanswered (refused, reset, timed out, 5xx).
    """

    def __init__(self, url: str, payload: Callable[[int], dict[str, Any]], ledger: Ledger, *, rate: float,
                 connections: int = 8, limit: int | None = None) -> None:
        self.url = url
        self.payload = payload
        self.ledger = ledger
        self.rate = rate
        self.connections = connections
        self.limit = limit
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="webhook-load", daemon=True)

    def start(self) -> WebhookLoad:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the load generator did not stop"

    def wait_sent(self, count: int, timeout: float = 120) -> None:
        wait_for(lambda: len(self.ledger.deliveries) >= count, timeout, f"{count} acknowledged deliveries")

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    async def _run(self) -> None:
        gate = asyncio.Semaphore(self.connections)
        timeout = aiohttp.ClientTimeout(total=20, connect=2)
        tasks: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(timeout=timeout) as session:
            started = time.monotonic()
            while not self._stop.is_set() and (self.limit is None or self.sent < self.limit):
                await gate.acquire()
                task = asyncio.create_task(self._post(session, self.sent, gate))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                self.sent += 1
                # Open loop: the next delivery is due at a fixed time, however long this one takes.
                await asyncio.sleep(max(0.0, started + self.sent / self.rate - time.monotonic()))
            if tasks:
                await asyncio.wait(tasks, timeout=30)

    async def _post(self, session: aiohttp.ClientSession, index: int, gate: asyncio.Semaphore) -> None:
        body = json.dumps(self.payload(index)).encode()
        delivery = f"load-{index}-{uuid.uuid4().hex[:8]}"
        try:
            async with session.post(f"{self.url}/webhooks/github", data=body,
                                    headers=signed(body, "push", delivery)) as response:
                self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
                answer = await response.json(content_type=None)
                if 200 <= response.status < 300:
                    self.ledger.delivered(delivery, answer["pipelines"])
                else:
                    self.ledger.failed()
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, OSError):
            self.ledger.failed()
        finally:
            gate.release()


# -- what a server may leave behind ------------------------------------------------------------------------------


def instance_containers(user: PodmanUser, data_dir: Path) -> list[str]:
    """Job containers of the forgeci whose data dir is `data_dir` (its instance label), any state."""
    result = user.run(["podman", "ps", "-a", "--filter", f"label=forgeci.instance={data_dir}", "--format",
                       '{{.ID}} {{index .Labels "forgeci.job"}} {{.State}}'], check=False)
    return result.stdout.decode().split("\n")[:-1] if result.stdout.strip() else []


def instance_pods(user: PodmanUser, data_dir: Path) -> list[str]:
    """Job pods (a job's services and container) of the forgeci whose data dir is `data_dir`, any state."""
    result = user.run(["podman", "pod", "ps", "--filter", f"label=forgeci.instance={data_dir}", "--format",
                       '{{.ID}} {{index .Labels "forgeci.job"}} {{.Status}}'], check=False)
    return result.stdout.decode().split("\n")[:-1] if result.stdout.strip() else []


def service_processes(data_dir: Path) -> list[int]:
    """Pids of `podman system service` processes listening on `data_dir`'s socket (runuser's included)."""
    needle = str(data_dir / "podman" / "podman.sock").encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes()
            if b"system\0service" in cmdline and needle in cmdline:
                found.append(int(proc.name))
    return found


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def workspaces(data_dir: Path) -> list[str]:
    folder = data_dir / "workspaces"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def leftovers(user: PodmanUser, data_dir: Path) -> list[str]:
    """Everything a stopped server must not leave: pods, containers, workspaces, Podman service processes."""
    found = [f"pod {p}" for p in instance_pods(user, data_dir)]
    found += [f"container {c}" for c in instance_containers(user, data_dir)]
    found += [f"workspace {w}" for w in workspaces(data_dir)]
    found += [f"podman service pid {p}" for p in service_processes(data_dir)]
    return found


def scrub(user: PodmanUser, data_dir: Path) -> None:
    """After a failed test that crashed a server: kill its orphaned Podman service and remove its containers."""
    for pid in service_processes(data_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for line in instance_pods(user, data_dir):
        user.run(["podman", "pod", "rm", "-f", "-t", "0", line.split()[0]], check=False)
    for line in instance_containers(user, data_dir):
        user.run(["podman", "rm", "-f", line.split()[0]], check=False)


@contextlib.contextmanager
def serving(server: ServeProcess) -> Iterator[ServeProcess]:
    """A started server that is stopped whatever the test does."""
    try:
        yield server.start()
    finally:
        server.stop()
