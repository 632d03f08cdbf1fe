"""The shared `podman system service`: one per Podman user at a fixed socket, outliving the forgeci that started it.

`forgeci run`, `forgeci serve` and the tests connect to it when it answers and start it only when none does, under
an flock so that concurrent starters never start two. It stops by itself after `runner.podman_idle` seconds
without a request (`podman system service --time`); a running forgeci's watchdog pings it every few seconds, which
keeps it up while any forgeci uses it. Nothing forgeci does ever kills a service that answers.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from runner.errors import EngineError
from runner.podman_service import answers, kill_group
from runner.podman_user import PodmanUser

log = logging.getLogger(__name__)

HUNG_AFTER = 30.0  # a service process that has not answered a ping for this long is of use to nobody: replaced
PING_TIMEOUT = 5.0  # generous: a loaded machine may take a while to answer


def shared_service_dir(user: PodmanUser) -> Path:
    """Where the Podman user's shared service lives: its runtime dir (tmpfs, per user, gone at reboot)."""
    return Path(user.runtime_dir) / "forgeci"


class SharedPodmanService:
    """The Podman user's long-lived API service; `stop()` leaves it running (its idle timeout ends it)."""

    shared = True

    def __init__(self, user: PodmanUser, state_dir: Path, idle: float) -> None:
        self.user = user
        self.state_dir = state_dir
        self.idle = idle
        self.socket_path = state_dir / "podman.sock"
        self.pid_file = state_dir / "service.pid"
        self.lock_file = state_dir / "service.lock"
        self.started_it = False  # whether this process started the service it uses (`--timings` says so)
        self._failing_since: float | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def alive(self) -> bool:
        return answers(self.socket_path, PING_TIMEOUT)

    def start(self, timeout: float = 15.0) -> None:
        """Connect to the running service, or start it (under the lock) when none answers."""
        if answers(self.socket_path, PING_TIMEOUT):
            return
        with self._locked():
            if answers(self.socket_path, PING_TIMEOUT):  # another forgeci started it while we waited
                return
            self._replace(timeout)

    def ensure(self) -> bool:
        """The watchdog's round: a ping (which also keeps the service from idling out while we run), and a new
        service when it is gone. A service process that is there but does not answer is left alone until it has
        not answered for HUNG_AFTER seconds: a busy service is somebody's running job. True when it started one."""
        if answers(self.socket_path, PING_TIMEOUT):
            self._failing_since = None
            return False
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        with self._locked():
            if answers(self.socket_path, PING_TIMEOUT):
                self._failing_since = None
                return False
            if self._service_pid() is not None and now - self._failing_since < HUNG_AFTER:
                return False
            log.warning("the shared Podman service is not answering; starting it")
            self._replace(15.0)
            self._failing_since = None
            return True

    def stop(self, grace: float = 5.0) -> None:
        """Nothing: other forgeci processes may be using the service; it stops after `idle` seconds unused."""

    def shutdown(self, grace: float = 5.0) -> bool:
        """Stop the service now (an explicit request: `forgeci podman stop`); True when one was running."""
        with self._locked():
            pid = self._service_pid()
            if pid is None:
                return False
            kill_group(pid, grace)
            self.pid_file.unlink(missing_ok=True)
            self.socket_path.unlink(missing_ok=True)
            return True

    def _replace(self, timeout: float) -> None:
        """Under the lock: stop a service process that does not answer, start a new one, wait until it answers."""
        stale = self._service_pid()
        if stale is not None:
            log.info("stopping a Podman service that does not answer (pid %d)", stale)
            kill_group(stale, 5.0)
        self.socket_path.unlink(missing_ok=True)
        self.user.ensure_runtime_dir()
        argv = self.user.command(["podman", "system", "service", f"--time={max(1, round(self.idle))}", self.url])
        # Its own session: it outlives us, and Ctrl-C in our terminal does not reach it.
        proc = subprocess.Popen(
            argv, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, cwd="/", env=None if self.user.switch else {**os.environ, **self.user.env()},
        )
        self.pid_file.write_text(str(proc.pid))
        with contextlib.suppress(OSError):
            self.user.chown(self.pid_file)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise EngineError(f"podman system service exited with {proc.returncode} at start")
            if answers(self.socket_path, 1.0):
                self.started_it = True
                return
            time.sleep(0.02)
        kill_group(proc.pid, 5.0, proc)
        self.pid_file.unlink(missing_ok=True)
        raise EngineError(f"podman system service did not answer on {self.socket_path} within {timeout:.0f}s")

    def _service_pid(self) -> int | None:
        """The pid in the pid file when it is still a service on our socket (not a reused pid)."""
        try:
            pid = int(self.pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            return None
        return pid if str(self.socket_path).encode() in cmdline and state != "Z" else None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.user.ensure_runtime_dir()  # the default state dir is inside it
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.user.chown(self.state_dir)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        # The Podman user's, like the folder: that account may run `forgeci run` itself and share this service.
        with contextlib.suppress(OSError):
            self.user.chown(self.lock_file)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
