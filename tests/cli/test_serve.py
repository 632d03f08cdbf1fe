"""`forgeci serve` as a process: where it listens, health, a job through it, a clean stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from config.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.podman]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "forgeci_cli", "--config", str(config), "serve"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})


def test_serve_listens_answers_health_and_stops_cleanly(settings: Settings, shared_dir: Path) -> None:
    port = free_port()
    config = shared_dir / "forgeci.toml"
    config.write_text(f'data_dir = "{settings.data_dir}"\n[server]\nport = {port}\n'
                      f'[runner]\nimage = "{settings.runner.image}"\nnetwork = "none"\n'
                      'podman_service = "private"\n')  # its own service, stopped with it (shared: test_podman_shared)
    proc = serve(config)
    try:
        assert proc.stdout is not None
        seen = []
        while not any("listening on" in line for line in seen) and len(seen) < 50:
            seen.append(proc.stdout.readline())
        assert f"listening on http://127.0.0.1:{port}" in seen[-1], seen
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            body = json.load(response)
        assert response.status == 200 and body["status"] == "ok" and body["engine"] is True
        service_pid = int((settings.data_dir / "podman" / "service.pid").read_text())
        assert Path(f"/proc/{service_pid}").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0
    assert not Path(f"/proc/{service_pid}").exists()
    assert not (settings.data_dir / "podman" / "service.pid").exists()


def test_serve_refuses_a_public_address_without_a_token(shared_dir: Path) -> None:
    config = shared_dir / "forgeci.toml"
    config.write_text(f'data_dir = "{shared_dir / "data"}"\n[server]\nhost = "0.0.0.0"\nport = {free_port()}\n')
    env = {k: v for k, v in os.environ.items() if k != "FORGECI_API_TOKEN"}
    result = subprocess.run([sys.executable, "-m", "forgeci_cli", "--config", str(config), "serve"],
                            capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 2
    assert "FORGECI_API_TOKEN" in result.stderr and "0.0.0.0" in result.stderr


def test_serve_refuses_a_postgresql_url_with_a_password_in_it(shared_dir: Path) -> None:
    config = shared_dir / "forgeci.toml"
    config.write_text(f'data_dir = "{shared_dir / "data"}"\n[server]\nport = {free_port()}\n'
                      '[queue]\nurl = "postgresql://ci:hunter2@db.example/forgeci"\n')
    result = subprocess.run([sys.executable, "-m", "forgeci_cli", "--config", str(config), "serve"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "password_env" in result.stderr and "hunter2" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
