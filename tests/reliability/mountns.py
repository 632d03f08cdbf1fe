"""A small disk for workspaces that the host and rootless Podman both see: a tmpfs shared into Podman's namespace.

Rootless Podman keeps its own mount namespace (held by its pause process) for all of a user's containers. It is a
private copy made when that process started, so a tmpfs mounted on the host later is invisible to it: a job's
container would bind-mount the folder under the tmpfs. The tmpfs is cloned with open_tree(2) and attached inside
that namespace with move_mount(2), so both see the same file system. setns(2) into a mount namespace needs a
single-threaded process: the attach and detach halves run as `python -m tests.reliability.mountns`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from runner.podman_user import PodmanUser

SYS_OPEN_TREE, SYS_MOVE_MOUNT = 428, 429  # x86_64 and aarch64 share these numbers (the unified syscall table)
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC = 1, 0o2000000
MOVE_MOUNT_F_EMPTY_PATH = 4
AT_FDCWD = -100
CLONE_NEWNS = 0x00020000
MNT_DETACH = 2


def _check(result: int, what: str) -> None:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _attach(path: str, pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    tree = libc.syscall(SYS_OPEN_TREE, AT_FDCWD, path.encode(), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)
    _check(tree, "open_tree")
    _check(libc.setns(os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY), CLONE_NEWNS), "setns")
    _check(libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, path.encode(), MOVE_MOUNT_F_EMPTY_PATH), "move_mount")


def _detach(path: str, pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.setns(os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY), CLONE_NEWNS), "setns")
    _check(libc.umount2(path.encode(), MNT_DETACH), "umount2")


def pause_pid(user: PodmanUser) -> int:
    """The pause process holding the user's rootless namespaces (started by any Podman command if absent)."""
    pid_file = Path(user.runtime_dir) / "libpod" / "tmp" / "pause.pid"
    if not pid_file.exists():
        user.run(["podman", "unshare", "true"])
    return int(pid_file.read_text())


def _half(action: str, path: Path, pid: int) -> None:
    result = subprocess.run([sys.executable, "-m", "tests.reliability.mountns", action, str(path), str(pid)],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    if result.returncode != 0:
        raise OSError(f"{action} {path} in the namespace of pid {pid}: {result.stderr.strip()[-500:]}")


@contextlib.contextmanager
def shared_tmpfs(path: Path, size: str, user: PodmanUser) -> Iterator[Path]:
    """A tmpfs of `size` at `path` (owned by the Podman user), the same one on the host and in rootless Podman."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755,uid={user.uid},gid={user.gid}", "tmpfs",
                    str(path)], check=True, capture_output=True, text=True)
    pid = pause_pid(user)
    try:
        _half("attach", path, pid)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                _half("detach", path, pid)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


if __name__ == "__main__":
    {"attach": _attach, "detach": _detach}[sys.argv[1]](sys.argv[2], int(sys.argv[3]))
