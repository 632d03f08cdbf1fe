"""Extraction: the stream hashed, decompressed on a thread of its own, parsed, checked and written member by member."""

from __future__ import annotations

import hashlib
import os
import queue
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, cast

import zstandard

from runner.archive.base import BLOCK, CHUNK, ExtractInfo, Progress
from runner.archive.safety import check_symlink, clean_name
from runner.archive.tar import (
    DEVICES,
    DIRECTORY,
    FIFO,
    HARDLINK,
    REGULAR,
    SYMLINK,
    Member,
    TarStream,
    read_members,
)
from runner.errors import ArchiveAborted, ArchiveError, CorruptArchive, UnsafeArchive
from runner.streams import Readable


class _Hashing:
    """Reads the compressed source, hashing and counting it, and telling progress every CHUNK or so."""

    def __init__(self, raw: Readable, progress: Progress | None, abort: threading.Event | None) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.count = 0
        self.progress = progress
        self.abort = abort

    def read(self, size: int = -1, /) -> bytes:
        if self.abort is not None and self.abort.is_set():
            raise ArchiveAborted("restore cancelled")
        data = self.raw.read(size)
        if data:
            self.hash.update(data)
            self.count += len(data)
            if self.progress is not None:
                self.progress(self.count)
        return data


class _Decompressing:
    """The decompressed stream, produced a few chunks ahead by a thread of its own: zstd releases the GIL, so it
    runs on another core beside the parsing and writing. Its errors come out of read(), in order."""

    DEPTH = 4

    def __init__(self, source: _Hashing) -> None:
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(self.DEPTH)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(source,), name="forgeci-unzstd", daemon=True)
        self._thread.start()

    def _run(self, source: _Hashing) -> None:
        try:
            dctx = zstandard.ZstdDecompressor()
            with dctx.stream_reader(cast(IO[bytes], source), read_size=CHUNK, read_across_frames=True,
                                    closefd=False) as reader:
                while not self._stop.is_set() and (data := reader.read(CHUNK)):
                    self._put(data)
            while not self._stop.is_set() and source.read(CHUNK):  # trailing bytes count for the checksum too
                pass
            self._put(b"")
        except BaseException as exc:  # handed to the reader, which raises it
            self._put(exc)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read(self, size: int = -1, /) -> bytes:
        if self._done:
            return b""
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        self._done = not item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()



def _umask() -> int:
    """The process umask, read without setting it (os.umask would change it for every thread for a moment)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o777  # unknown: always chmod


class Extractor:
    """Writes members below `root`, which nothing else may change meanwhile (a fresh folder, before the job runs).

    Every entry it creates is remembered: a member's parent must be a directory (made here or already a real
    directory), never a link or file, so nothing is ever written through a link; hard links may only point at
    regular files extracted before them. Ownership goes to `owner` (the Podman user) when given, and modes lose
    their setuid, setgid and sticky bits.
    """

    def __init__(self, root: Path, *, owner: tuple[int, int] | None = None, container_links: bool = False) -> None:
        self.root = str(root)
        self.owner = owner
        self.container_links = container_links
        self.dirs: dict[str, tuple[int, float] | None] = {"": None}  # rel -> (mode, mtime) to apply at the end
        self.files: set[str] = set()
        self.others: set[str] = set()  # symlinks and hard links: never a parent, never overwritten
        self.counts = {"files": 0, "dirs": 0, "links": 0, "skipped": 0}
        self.umask = _umask()

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _parent(self, rel: str, member: str) -> None:
        """Make sure every ancestor of `rel` is a real directory, creating missing ones."""
        parent = rel.rpartition("/")[0]
        if parent in self.dirs:
            return
        partial = ""
        for part in parent.split("/"):
            partial = f"{partial}/{part}" if partial else part
            if partial in self.dirs:
                continue
            if partial in self.files or partial in self.others:
                raise UnsafeArchive(member, f"writes through {partial!r}, which is not a directory")
            path = self._path(partial)
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    raise UnsafeArchive(member, f"writes through {partial!r}, which is not a directory") from None
                self.dirs[partial] = None
                continue
            self._own(path)
            self.dirs[partial] = None
            self.counts["dirs"] += 1

    def _own(self, path: str | int) -> None:
        if self.owner is not None:
            if isinstance(path, int):
                os.fchown(path, *self.owner)
            else:
                os.lchown(path, *self.owner)

    def _fresh(self, rel: str, member: str) -> str:
        if rel in self.dirs or rel in self.files or rel in self.others:
            raise UnsafeArchive(member, "a second member with the same path")
        return self._path(rel)

    def add(self, member: Member, data: Iterator[memoryview]) -> None:
        """Extract one member; `data` yields its bytes (and must be consumed for regular files)."""
        rel = clean_name(member.name)
        kind = member.kind
        if kind in DEVICES:
            raise UnsafeArchive(member.name, "device file")
        if rel == "":
            if kind != DIRECTORY:
                raise UnsafeArchive(member.name, "the target itself as a non-directory")
            return  # the target's own mode and owner are the caller's
        self._parent(rel, member.name)
        if kind == DIRECTORY:
            path = self._path(rel)
            if rel in self.files or rel in self.others:
                raise UnsafeArchive(member.name, "a directory over a file or link")
            if rel not in self.dirs:
                try:
                    os.mkdir(path, 0o700)
                except FileExistsError:
                    if not stat.S_ISDIR(os.lstat(path).st_mode):
                        raise UnsafeArchive(member.name, "replaces an existing file or link") from None
                else:
                    self._own(path)
                    self.counts["dirs"] += 1
            self.dirs[rel] = (member.mode & 0o777, member.mtime)
        elif kind in REGULAR:
            path = self._fresh(rel, member.name)
            mode = member.mode & 0o777
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
            try:
                for view in data:
                    while view:
                        view = view[os.write(fd, view):]
                self._own(fd)
                if mode & self.umask:  # open() took the umask's bits off: one syscall per file saved otherwise
                    os.fchmod(fd, mode)
                os.utime(fd, (member.mtime, member.mtime))
            finally:
                os.close(fd)
            self.files.add(rel)
            self.counts["files"] += 1
        elif kind == SYMLINK:
            check_symlink(rel, member.linkname, container_links=self.container_links)
            path = self._fresh(rel, member.name)
            os.symlink(member.linkname, path)
            self._own(path)
            os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
            self.others.add(rel)
            self.counts["links"] += 1
        elif kind == HARDLINK:
            source = clean_name(member.linkname)
            if source not in self.files:
                raise UnsafeArchive(member.name, f"hard link to {member.linkname!r}, which is not a file "
                                                 f"extracted before it")
            path = self._fresh(rel, member.name)
            os.link(self._path(source), path, follow_symlinks=False)
            self.others.add(rel)
            self.counts["links"] += 1
        elif kind == FIFO:
            self.counts["skipped"] += 1
        else:
            raise UnsafeArchive(member.name, f"unsupported member type {kind!r}")

    def finish(self) -> None:
        """Directory modes and times last (deepest first): a read-only directory must not stop its own contents."""
        for rel in sorted((r for r, meta in self.dirs.items() if meta is not None), key=lambda r: -r.count("/")):
            mode, mtime = self.dirs[rel]  # type: ignore[misc]
            path = self._path(rel)
            os.chmod(path, mode | 0o700 if self.owner is None and os.geteuid() != 0 else mode)
            os.utime(path, (mtime, mtime))


def extract(
    source: Readable, target: Path, *, checksum: str | None = None, owner: tuple[int, int] | None = None,
    container_links: bool = False, progress: Progress | None = None, abort: threading.Event | None = None,
) -> ExtractInfo:
    """Extract a tar.zst stream into the existing folder `target`; the sha256 of the stream must be `checksum`.

    The checksum can only be known at the end of a stream: the caller extracts into a folder it can throw away
    (a staging folder, a fresh workspace) and keeps it only when this returns. Errors: CorruptArchive (damage,
    checksum), UnsafeArchive (a hostile member), ArchiveAborted, ArchiveError (the file system).
    """
    hashing = _Hashing(source, progress, abort)
    extractor = Extractor(target, owner=owner, container_links=container_links)
    decompressed = _Decompressing(hashing)
    try:
        stream = TarStream(decompressed)
        for member in read_members(stream):
            if abort is not None and abort.is_set():
                raise ArchiveAborted("restore cancelled")
            regular = member.kind in REGULAR
            data = stream.slices(member.size if regular else 0)
            extractor.add(member, data)
            for _ in data:  # whatever the member did not consume (a skipped FIFO's zero bytes)
                pass
            stream.skip(member.size - (member.size if regular else 0) + (-member.size % BLOCK))
        stream.drain()  # to the end of the source: every byte belongs to the checksum
        raw = stream.total
        extractor.finish()
    except zstandard.ZstdError as exc:
        raise CorruptArchive(f"bad zstd data: {exc}") from exc
    except OSError as exc:
        raise ArchiveError(f"cannot extract into {target}: {exc}") from exc
    finally:
        decompressed.close()
    digest = hashing.hash.hexdigest()
    if checksum is not None and digest != checksum:
        raise CorruptArchive(f"checksum mismatch: expected {checksum[:16]}..., got {digest[:16]}...")
    c = extractor.counts
    return ExtractInfo(hashing.count, raw, digest, c["files"], c["dirs"], c["links"], c["skipped"])
