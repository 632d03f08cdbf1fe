"""End to end: `forgeci serve` runs a real job, `forgeci tui` in tmux shows it, follows its log and cancels it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from config.settings import Settings
from tests.cli.test_serve import free_port, serve
from tests.conftest import SETUP_HINT

pytestmark = [pytest.mark.slow, pytest.mark.podman]


class Tmux:
    """A private tmux server (its own socket) holding one session that runs a command."""

    def __init__(self, command: list[str], env: dict[str, str], width: int = 100, height: int = 30) -> None:
        self.socket = f"forgeci-test-{os.getpid()}-{time.monotonic_ns()}"
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        self.run("new-session", "-d", "-s", "tui", "-x", str(width), "-y", str(height),
                 f"env {exports} {' '.join(command)}; sleep 60")

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True, text=True,
                              timeout=30).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "tui")

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "tui", *keys)

    def wait_for(self, found: Callable[[str], bool], what: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if found(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not on the screen within {timeout} s; it shows:\n{text}")
            time.sleep(0.2)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


def api(base: str, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method="POST" if body is not None else "GET",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)  # type: ignore[no-any-return]


@pytest.fixture
def server(settings: Settings, shared_dir: Path) -> Iterator[str]:
    port = free_port()
    config = shared_dir / "forgeci.toml"
    config.write_text(f'data_dir = "{settings.data_dir}"\n[server]\nport = {port}\n'
                      f'[runner]\nimage = "{settings.runner.image}"\nnetwork = "none"\n')
    proc = serve(config, {"FORGECI_API_TOKEN": ""})
    try:
        assert proc.stdout is not None
        seen = []
        while not any("listening on" in line for line in seen[-1:]):  # log lines may come first
            seen.append(proc.stdout.readline())
            assert seen[-1], "forgeci serve stopped:\n" + "".join(seen)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_the_console_shows_a_real_job_its_log_and_cancels_it(server: str,
                                                             make_repo: Callable[..., tuple[Path, str]]) -> None:
    if not shutil.which("tmux"):
        pytest.fail(f"tmux is not installed: {SETUP_HINT}")
    repo, sha = make_repo({"README.md": "e2e\n"})
    submitted = api(server, "/jobs/submit", {
        "repo": str(repo), "ref": "main",
        "steps": [{"name": "count", "run": "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"}],
    })
    job_id, pipeline_id = submitted["id"], submitted["pipeline"]
    tmux = Tmux([sys.executable, "-m", "forgeci_cli", "tui", "--server", server],
                {"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "TERM": "xterm-256color",
                 "FORGECI_API_TOKEN": ""})
    try:
        screen = tmux.wait_for(lambda s: "● live" in s and f" {job_id} " in s and "running" in s,
                               "the running job in the jobs table")
        assert "repo" in screen and "main" in screen
        tmux.keys("Enter")  # the newest job is on top and selected
        screen = tmux.wait_for(lambda s: f"#{job_id}" in s and "tick 3" in s, "its log lines")
        assert "count" in screen  # the step table
        tmux.keys("c")
        tmux.wait_for(lambda s: f"Cancel job #{job_id}" in s, "the confirmation")
        tmux.keys("y")
        deadline = time.monotonic() + 60
        while api(server, f"/jobs/status?id={job_id}")["state"] != "cancelled":
            assert time.monotonic() < deadline, "the job was not cancelled within 60 s"
            time.sleep(0.2)
        tmux.wait_for(lambda s: "cancelled" in s and "log: " in s and "ended" in s, "the cancelled job and log end")
        tmux.keys("Escape")
        tmux.wait_for(lambda s: f" {job_id} " in s and "cancelled" in s and "1 Jobs" in s,
                      "the cancelled job in the list")
        tmux.keys("5")  # the pipelines tab: the one pipeline the submit made, cancelled with its job
        tmux.wait_for(lambda s: "1 pipeline, newest first" in s and f" {pipeline_id} " in s and "cancelled" in s
                      and "1/1" in s, "the submitted pipeline in the pipelines tab")
        tmux.keys("q")
        tmux.wait_for(lambda s: "1 Jobs" not in s, "the console quitting", timeout=20)
    finally:
        tmux.close()
