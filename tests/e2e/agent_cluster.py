"""Real processes for the agent tests: `forgeci serve` with `runner.embedded = false`, `forgeci agent`s with data
dirs of their own, moto's S3 server as the shared store; HTTP calls to the coordinator's API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bot.api_helpers import free_port
from tests.runner.test_store import MotoServer

ROOT = Path(__file__).resolve().parents[2]
S3_ENV = {"FORGECI_S3_ACCESS_KEY": "k", "FORGECI_S3_SECRET_KEY": "s"}


def settings_text(data_dir: Path, store: str, image: str, *, port: int = 0, lease: int = 60) -> str:
    return (f'data_dir = "{data_dir}"\n[server]\nport = {port or 8080}\n[queue]\nlease_seconds = {lease}\n'
            f'max_concurrent = 4\n[runner]\nembedded = false\nimage = "{image}"\nnetwork = "none"\n'
            f'shutdown_grace = "5s"\n[storage]\nurl = "{store}"\n')


@dataclass
class Cluster:
    base: Path
    moto: MotoServer
    image: str
    lease: int = 60
    bucket: str = field(default_factory=lambda: f"agents{int(time.time() * 1000)}")
    port: int = field(default_factory=free_port)
    server: subprocess.Popen[bytes] | None = None
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self, name: str) -> Path:
        path = self.base / f"{name}.toml"
        if not path.exists():
            path.write_text(settings_text(self.base / name, self.moto.url(self.bucket), self.image,
                                          port=self.port, lease=self.lease))
        return path

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": str(ROOT), "FORGECI_LOG_LEVEL": "INFO",
                **S3_ENV, **extra}

    def cli(self, *args: str, config: str = "server") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "forgeci_cli", "--config", str(self.config(config)), *args],
                              capture_output=True, text=True, cwd=ROOT, env=self.env(), timeout=120,
                              check=False)

    def start_server(self) -> None:
        log = (self.base / "server.out").open("ab")
        self.server = subprocess.Popen([sys.executable, "-m", "forgeci_cli", "--config", str(self.config("server")),
                                        "serve"], cwd=ROOT, env=self.env(), stdout=log, stderr=log)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.server.poll() is None, (self.base / "server.out").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=2).close()
                return
            except (OSError, urllib.error.HTTPError):
                time.sleep(0.2)
        raise AssertionError("the coordinator did not answer within 120s")

    def token(self, name: str) -> str:
        if name not in self.tokens:
            done = self.cli("agents", "token", "create", name)
            assert done.returncode == 0, done.stderr
            self.tokens[name] = done.stdout.strip()
        return self.tokens[name]

    def start_agent(self, name: str) -> subprocess.Popen[bytes]:
        log = (self.base / f"{name}.out").open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "forgeci_cli", "--config", str(self.config(name)), "agent",
                                 "--server", self.url, "--name", name], cwd=ROOT,
                                env=self.env(FORGECI_AGENT_TOKEN=self.token(name)), stdout=log, stderr=log)
        self.agents[name] = proc
        return proc

    def output(self, name: str) -> str:
        path = self.base / f"{name}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill9(self, proc: subprocess.Popen[bytes]) -> None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)

    def stop(self) -> None:
        """Agents first (each stops its own Podman service), then the coordinator."""
        for proc in [*self.agents.values(), self.server]:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.agents.values(), self.server]:
            if proc is not None:
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)

    # -- the coordinator's API ------------------------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def submit(self, repo: Path, sha: str) -> int:
        return int(self.api("POST", "/jobs/submit", {"repo": str(repo), "ref": "main", "sha": sha})["pipeline"])

    def pipeline(self, pipeline_id: int) -> dict[str, Any]:
        return self.api("GET", f"/pipelines/{pipeline_id}")  # type: ignore[no-any-return]

    def job(self, job_id: int) -> dict[str, Any]:
        return self.api("GET", f"/jobs/status?id={job_id}")  # type: ignore[no-any-return]

    def log(self, job_id: int) -> list[dict[str, Any]]:
        lines = []
        log = self.base / "server" / "logs" / f"{job_id}.log"
        for raw in log.read_text().splitlines():
            lines.append(json.loads(raw))
        return lines

    def wait_pipeline(self, pipeline_id: int, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.pipeline(pipeline_id)
            if record["state"] in ("success", "failure", "error", "cancelled", "timeout", "skipped"):
                return record
            time.sleep(0.3)
        raise AssertionError(f"pipeline {pipeline_id} did not finish: {self.pipeline(pipeline_id)}\n"
                             + "\n".join(f"--- {n}\n{self.output(n)[-3000:]}" for n in ["server", *self.agents]))
