"""Who runs Podman: the current user, or `runner.podman_user` when forgeci runs as root (always rootless)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runner.errors import RunnerError


@dataclass(frozen=True)
class PodmanUser:
    """The unprivileged account whose rootless Podman runs the jobs, and how to run commands as it."""

    name: str
    uid: int
    gid: int
    home: str
    runtime_dir: str
    switch: bool  # True when we are root and must drop to this user for every Podman call

    @classmethod
    def resolve(cls, configured: str) -> PodmanUser:
        """Root delegates to `configured` (which must exist: scripts/setup creates it); others use themselves."""
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam(configured)
            except KeyError:
                raise RunnerError(
                    f"the Podman user {configured!r} does not exist; run scripts/setup "
                    f"(or set runner.podman_user to an unprivileged account)"
                ) from None
            # A fixed runtime dir: Podman records it in its database and refuses a different one later.
            return cls(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, f"/run/user/{pw.pw_uid}", True)
        return cls.current()

    @classmethod
    def current(cls) -> PodmanUser:
        """This process's own account, never switching (an ordinary user's Podman, or an engine with no Podman)."""
        pw = pwd.getpwuid(os.geteuid())
        runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{pw.pw_uid}"
        if not os.access(runtime, os.W_OK):
            runtime = f"/tmp/forgeci-run-{pw.pw_uid}"
        return cls(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, runtime, False)

    def ensure_runtime_dir(self) -> None:
        """Create the user's XDG_RUNTIME_DIR (0700, owned by the user) when no login session made it."""
        path = Path(self.runtime_dir)
        path.mkdir(parents=True, exist_ok=True)
        if self.switch:
            os.chown(path, self.uid, self.gid)
        path.chmod(0o700)

    def chown(self, path: Path) -> None:
        """Give a folder the job touches to the Podman user (a no-op when we already are that user)."""
        if self.switch:
            os.chown(path, self.uid, self.gid)

    def env(self) -> dict[str, str]:
        """The environment Podman needs to find this user's storage and runtime dir."""
        base = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TERM")}
        base.update(HOME=self.home, USER=self.name, LOGNAME=self.name, XDG_RUNTIME_DIR=self.runtime_dir)
        base.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        return base

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` as run by this user: through runuser with a clean environment when we are root."""
        if not self.switch:
            return list(argv)
        env = [f"{k}={v}" for k, v in self.env().items()]
        # Found by path too: root's PATH in a service or a test harness may lack /usr/sbin.
        runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin") or "runuser"
        return [runuser, "-u", self.name, "--", "env", "-i", *env, *argv]

    def run(
        self, argv: Sequence[str], *, check: bool = True, capture: bool = True, timeout: float | None = None,
        input: bytes | None = None, stdin: int | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a command as this user, from its home (root's cwd may be unreadable to it)."""
        self.ensure_runtime_dir()
        return subprocess.run(
            self.command(argv), check=check, timeout=timeout, input=input, stdin=stdin,
            stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None,
            cwd=self.home if os.path.isdir(self.home) else "/",
            env=None if self.switch else {**os.environ, **self.env()},
        )
