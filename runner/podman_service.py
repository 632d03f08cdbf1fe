"""`podman system service` on a private socket, run as the Podman user: started, watched, restarted, stopped."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from runner.errors import EngineError
from runner.podman_user import PodmanUser

log = logging.getLogger(__name__)


class PodmanService:
    """`podman system service` on a private socket, run as the Podman user; restarted when it dies
    (`runner.podman_service = "private"`; the shared one is runner/podman_shared.py)."""

    shared = False
    started_it = True

    def __init__(self, user: PodmanUser, state_dir: Path) -> None:
        self.user = user
        self.state_dir = state_dir
        self.socket_path = state_dir / "podman.sock"
        self.pid_file = state_dir / "service.pid"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self, timeout: float = 15.0) -> None:
        """Start the service (after stopping one a crashed run left behind) and wait until it answers."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.user.chown(self.state_dir)
        self.reap_stale()
        self.socket_path.unlink(missing_ok=True)
        self.user.ensure_runtime_dir()
        argv = self.user.command(["podman", "system", "service", "--time=0", self.url])
        # A session of its own: one killpg stops runuser and podman together, and Ctrl-C in a
        # terminal running `forgeci serve` does not kill the engine under running jobs.
        self._proc = subprocess.Popen(
            argv, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, cwd="/", env=None if self.user.switch else {**os.environ, **self.user.env()},
        )
        self.pid_file.write_text(str(self._proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EngineError(f"podman system service exited with {self._proc.returncode} at start")
            if self._answers():
                return
            time.sleep(0.05)
        self.stop()
        raise EngineError(f"podman system service did not answer on {self.socket_path} within {timeout:.0f}s")

    def _answers(self) -> bool:
        return answers(self.socket_path, 1.0)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None and self._answers()

    def ensure(self) -> bool:
        """Restart the service if it died; True when it had to."""
        if self.alive():
            return False
        log.warning("the Podman service is not answering; restarting it")
        self.stop()
        self.start()
        return True

    def stop(self, grace: float = 5.0) -> None:
        if self._proc is not None:
            kill_group(self._proc.pid, grace, self._proc)
            self._proc = None
        self.pid_file.unlink(missing_ok=True)

    def reap_stale(self) -> None:
        """Stop a service whose pid file a crashed run left, if that pid is still our service."""
        try:
            pid = int(self.pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if str(self.socket_path).encode() in cmdline:
            log.info("stopping a Podman service left by an earlier run (pid %d)", pid)
            kill_group(pid, 5.0)


def answers(socket_path: Path, timeout: float) -> bool:
    """Whether a Podman API service answers a ping on `socket_path`."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return sock.recv(12).startswith(b"HTTP/1.")
    except OSError:
        return False


def kill_group(pid: int, grace: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                break
        elif not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc is not None:
        proc.wait()
    # runuser may exit before the podman it started: wait until the whole group is gone.
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
