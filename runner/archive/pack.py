"""Writing archives: GNU tar reads the tree (C speed, every file type and long name), zstd compresses, we hash."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, cast

import zstandard

from runner.archive.base import CHUNK, LEVEL, ArchiveInfo, Compressor
from runner.errors import ArchiveAborted, ArchiveError
from runner.streams import Readable


def check_paths(root: Path, paths: Sequence[str]) -> tuple[list[str], list[str]]:
    """The paths that can be archived (existing, not inside another listed path), and why others cannot.

    tar runs as root: a parent directory that is a symlink would make it read whatever the link points at, so
    every component but the last must be a real directory. The last may be a link: tar stores it as one.
    """
    kept: list[str] = []
    problems: list[str] = []
    for path in sorted({p.strip("/") for p in paths}, key=lambda p: (p.count("/"), p)):
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            problems.append(f"{path!r} is not a path inside the workspace")
            continue
        if any(path == k or path.startswith(k + "/") for k in kept):
            continue  # already inside a listed path: archiving it twice would duplicate members
        current = root
        for i, part in enumerate(parts):
            current = current / part
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                break  # absent: nothing to save
            except OSError as exc:
                problems.append(f"{path}: {exc.strerror}")
                break
            if i < len(parts) - 1 and not stat.S_ISDIR(mode):
                problems.append(f"{path}: {'/'.join(parts[:i + 1])} is not a directory (a link?); not saved")
                break
        else:
            kept.append("/".join(parts))
    return kept, problems


class ArchiveWriter:
    """A readable stream of `tar | zstd` over `paths` below `root`; the store pulls it with read().

    The checksum and sizes are known once read() has returned b"" (see info()). A tar failure surfaces as an
    ArchiveError from read(), so the store never keeps an incomplete archive.
    """

    def __init__(
        self, root: Path, paths: Sequence[str], *, compressor: Compressor = "zstandard", level: int = LEVEL,
        threads: int = 0, abort: threading.Event | None = None, listed: bool = False,
        tap: Callable[[bytes], None] | None = None,
    ) -> None:
        """`listed`: `paths` are every entry (folders before what they hold), read by tar from a list rather than
        its command line (no length limit), not recursed into, and symlinks among them are stored as the files
        they point at (which the caller checked are inside `root`), hard links as whole files. `tap` sees the tar
        bytes before compression (in-process compressor only)."""
        if not paths:
            raise ArchiveError("nothing to archive")
        if tap is not None and compressor != "zstandard":
            raise ArchiveError("a tap needs the in-process compressor")
        self._abort = abort
        self._hash = hashlib.sha256()
        self._size = 0
        self._done = False
        self._stderr = tempfile.TemporaryFile()
        self._list: IO[bytes] | None = None
        argv = ["tar", "--create", "--file=-", "--format=gnu", "--numeric-owner", "--warning=no-file-changed",
                "-C", str(root)]
        stdin: int | IO[bytes] = subprocess.DEVNULL
        if listed:
            stdin = self._list = tempfile.TemporaryFile()
            self._list.write(b"\0".join(os.fsencode(p) for p in paths) + b"\0")
            self._list.seek(0)
            argv += ["--null", "--verbatim-files-from", "--no-recursion", "--dereference", "--hard-dereference",
                     "--files-from=-"]
        else:
            argv += ["--", *paths]
        env = {"LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        workers = threads or os.cpu_count() or 1
        self._procs: list[subprocess.Popen[bytes]] = []
        self._cli = compressor == "zstd"
        try:
            tar = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=self._stderr,
                                   env=env, bufsize=0)
            self._procs.append(tar)
            assert tar.stdout is not None
            self._counted = _Counting(tar.stdout, tap)
            self._stream: Readable
            if self._cli:
                zstd = subprocess.Popen(["zstd", "-q", f"-{level}", f"-T{workers}", "-c"], stdin=tar.stdout,
                                        stdout=subprocess.PIPE, stderr=self._stderr, env=env, bufsize=0)
                self._procs.append(zstd)
                tar.stdout.close()  # zstd holds it now; tar gets SIGPIPE if zstd dies
                assert zstd.stdout is not None
                self._stream = zstd.stdout
            else:
                cctx = zstandard.ZstdCompressor(level=level, threads=workers if workers > 1 else 0)
                self._stream = cctx.stream_reader(cast(IO[bytes], self._counted), read_size=CHUNK)
        except (OSError, zstandard.ZstdError) as exc:
            self.close()
            raise ArchiveError(f"cannot start tar and zstd: {exc}") from exc

    def read(self, size: int = -1, /) -> bytes:
        if self._done:
            return b""
        if self._abort is not None and self._abort.is_set():
            self.close()
            raise ArchiveAborted("archive cancelled")
        try:
            data = self._stream.read(CHUNK if size is None or size < 0 else size)
        except (OSError, zstandard.ZstdError) as exc:
            self.close()
            raise ArchiveError(f"compressing failed: {exc}") from exc
        if data:
            self._hash.update(data)
            self._size += len(data)
            return data
        self._finish()
        return b""

    def _finish(self) -> None:
        self._done = True
        failures = []
        for proc in self._procs:
            code = proc.wait()
            if code not in (0, 1):  # tar's 1: a file changed while it was read, which a cache can live with
                failures.append(f"{Path(str(proc.args[0])).name} exited with {code}")  # type: ignore[index]
        if failures:
            self._stderr.seek(0)
            tail = " | ".join(self._stderr.read().decode(errors="replace").strip().splitlines()[-3:])
            self.close()
            raise ArchiveError(f"{'; '.join(failures)}: {tail or 'no message'}")

    def info(self) -> ArchiveInfo:
        """Sizes and checksum, once read() has returned b""; raw_size is None when the zstd CLI read the tar."""
        if not self._done:
            raise ArchiveError("the archive is not finished")
        return ArchiveInfo(self._size, self._hash.hexdigest(), None if self._cli else self._counted.count)

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self._stderr.close()
        if self._list is not None:
            self._list.close()

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Counting:
    """A reader that counts what passes through it, and shows it to `tap`."""

    def __init__(self, raw: IO[bytes], tap: Callable[[bytes], None] | None = None) -> None:
        self.raw = raw
        self.count = 0
        self.tap = tap

    def read(self, size: int = -1, /) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        if self.tap is not None and data:
            self.tap(data)
        return data

