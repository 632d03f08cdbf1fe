"""Cache and snapshot archives: tar + zstd streamed both ways, checksummed, extracted member by member with checks."""

from __future__ import annotations

import hashlib
import os
import queue
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, Protocol, cast

import zstandard

from runner.errors import RunnerError

CHUNK = 1 << 20  # bytes per read on every leg of the pipeline: large enough that Python's per-call cost vanishes
LEVEL = 3  # zstd level: design.md's measurements found it 8% smaller than gzip -6 at a tenth of the time
BLOCK = 512
Compressor = Literal["zstandard", "zstd"]  # in-process multi-threaded zstd, or the zstd CLI behind a pipe
Progress = Callable[[int], None]  # told the number of archive (compressed) bytes moved so far


class ArchiveError(RunnerError):
    """An archive could not be written or read."""


class CorruptArchive(ArchiveError):
    """The archive's bytes are damaged: wrong checksum, bad zstd frame, bad tar header, or cut short."""


class UnsafeArchive(ArchiveError):
    """A member would land outside the target, write through a link, or create a device: extraction stops."""

    def __init__(self, member: str, reason: str) -> None:
        super().__init__(f"refused member {member!r}: {reason}")
        self.member = member
        self.reason = reason


class ArchiveAborted(ArchiveError):
    """The job was cancelled while its archive was being written or read."""


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class ArchiveInfo:
    """What a finished archive holds: its compressed size and sha256, and the size of the tar inside."""

    size: int
    checksum: str
    raw_size: int | None


@dataclass(frozen=True)
class ExtractInfo:
    """What an extraction wrote."""

    size: int  # compressed bytes read
    raw_size: int  # tar bytes
    checksum: str
    files: int
    dirs: int
    links: int
    skipped: int  # FIFOs: harmless but useless, and opening one blocks


# --------------------------------------------------------------------------------------------------
# Writing: GNU tar reads the tree (C speed, every file type and long name), zstd compresses, we hash.
# --------------------------------------------------------------------------------------------------


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
        threads: int = 0, abort: threading.Event | None = None,
    ) -> None:
        if not paths:
            raise ArchiveError("nothing to archive")
        self._abort = abort
        self._hash = hashlib.sha256()
        self._size = 0
        self._done = False
        self._stderr = tempfile.TemporaryFile()
        argv = ["tar", "--create", "--file=-", "--format=gnu", "--numeric-owner", "--warning=no-file-changed",
                "-C", str(root), "--", *paths]
        env = {"LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        workers = threads or os.cpu_count() or 1
        self._procs: list[subprocess.Popen[bytes]] = []
        self._cli = compressor == "zstd"
        try:
            tar = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr,
                                   env=env, bufsize=0)
            self._procs.append(tar)
            assert tar.stdout is not None
            self._counted = _Counting(tar.stdout)
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

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Counting:
    """A reader that counts what passes through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.count = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data


# --------------------------------------------------------------------------------------------------
# Reading: our own tar parser and extractor. tarfile's stream mode is ten times slower than GNU tar, and
# its extraction filters have had bypasses (and Debian's Python 3.11.2 has none); GNU tar follows links
# that already exist in the target. Here every member is checked before anything is written for it.
# --------------------------------------------------------------------------------------------------

REGULAR = (b"0", b"\0", b"7")  # 7: contiguous file, a regular file everywhere that matters
SYMLINK, HARDLINK, DIRECTORY, FIFO = b"2", b"1", b"5", b"6"
DEVICES = (b"3", b"4")
GNU_LONGNAME, GNU_LONGLINK, PAX_HEADER, PAX_GLOBAL = b"L", b"K", b"x", b"g"
MAX_META = 1 << 20  # a long name or pax header larger than this is an attack on memory, not a path


@dataclass(frozen=True)
class Member:
    """One tar member as the extractor sees it (names still raw, checked later)."""

    name: str
    kind: bytes
    size: int
    mode: int
    mtime: float
    linkname: str


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


class _TarStream:
    """Tar blocks from a decompressed stream: headers, and file data handed out in slices."""

    def __init__(self, raw: Readable) -> None:
        self.raw = raw
        self.buf = b""
        self.pos = 0
        self.total = 0

    def _fill(self) -> bool:
        data = self.raw.read(CHUNK)
        if not data:
            return False
        self.total += len(data)
        self.buf = self.buf[self.pos:] + data if self.pos < len(self.buf) else data
        self.pos = 0
        return True

    def exact(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n:
            if not self._fill():
                raise CorruptArchive("the archive ends in the middle of a member")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def slices(self, n: int) -> Iterator[memoryview]:
        """The next n bytes as a series of views, without copying."""
        while n > 0:
            if self.pos >= len(self.buf) and not self._fill():
                raise CorruptArchive("the archive ends in the middle of a file")
            take = min(n, len(self.buf) - self.pos)
            yield memoryview(self.buf)[self.pos:self.pos + take]
            self.pos += take
            n -= take

    def skip(self, n: int) -> None:
        for _ in self.slices(n):
            pass

    def drain(self) -> None:
        """Read to the end (zero blocks after the end marker), so the checksum covers every byte."""
        self.pos = len(self.buf)
        while self._fill():
            self.pos = len(self.buf)


def _number(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256, for sizes over 8 GB and negative times
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] & 0x40 else value
    text = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise CorruptArchive(f"bad number {field!r} in a tar header") from None


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax(data: bytes) -> dict[str, str]:
    """`LEN key=value\\n` records of a pax extended header."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise CorruptArchive("bad pax header record") from None
        if space < 0 or length <= 0 or pos + length > len(data):
            raise CorruptArchive("bad pax header record")
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def read_members(stream: _TarStream) -> Iterator[Member]:
    """The members of a tar stream (ustar, GNU and pax); the caller must consume each file's data."""
    long_name: str | None = None
    long_link: str | None = None
    pax: dict[str, str] = {}
    while True:
        header = stream.exact(BLOCK)
        if header == bytes(BLOCK):
            return  # end marker (a second zero block follows, and is drained with the rest)
        stored = _number(header[148:156])
        actual = sum(header) - sum(header[148:156]) + 8 * 32
        if stored != actual:
            raise CorruptArchive("a tar header fails its checksum")
        kind = header[156:157]
        size = _number(header[124:136])
        if size < 0:
            raise CorruptArchive("negative member size in a tar header")
        if kind in (GNU_LONGNAME, GNU_LONGLINK, PAX_HEADER, PAX_GLOBAL):
            if size > MAX_META:
                raise CorruptArchive(f"a {size}-byte tar meta header")
            data = stream.exact(size)
            stream.skip(-size % BLOCK)
            if kind == GNU_LONGNAME:
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif kind == GNU_LONGLINK:
                long_link = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif kind == PAX_HEADER:
                pax = _pax(data)
            continue  # global pax headers carry nothing this extractor uses
        name = _text(header[0:100])
        if header[257:263] == b"ustar\0" and header[345:500].strip(b"\0"):  # POSIX ustar prefix
            name = _text(header[345:500]) + "/" + name
        name = pax.get("path", long_name or name)
        linkname = pax.get("linkpath", long_link or _text(header[157:257]))
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                raise CorruptArchive("bad size in a pax header") from None
        try:
            mtime = float(pax["mtime"]) if "mtime" in pax else float(_number(header[136:148]))
        except ValueError:
            raise CorruptArchive("bad mtime in a pax header") from None
        yield Member(name, kind, size, _number(header[100:108]), mtime, linkname)
        long_name = long_link = None
        pax = {}


def clean_name(name: str) -> str:
    """The member's path relative to the target ("" is the target itself); UnsafeArchive if it could leave it."""
    if "\0" in name:
        raise UnsafeArchive(name, "NUL in the name")
    if name.startswith("/"):
        raise UnsafeArchive(name, "absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(name, "'..' in the path")
    return "/".join(parts)


def check_symlink(rel: str, target: str, *, container_links: bool) -> None:
    """Refuse a symlink whose target can resolve outside the extraction root.

    Only leading `..` are allowed, no more than the link's depth: a `..` after a name could climb through
    another link (`a -> x/..` with `x -> ../..`), so chains of links stay inside by construction.
    With `container_links`, an absolute target is allowed: workspaces are mounted at /workspace in the job's
    container, where `/usr/bin/python3` (a venv's bin/python) means the image's file. Nothing here follows
    links: the extractor never writes through one, and tar and lchown never dereference them.
    """
    if not target or "\0" in target:
        raise UnsafeArchive(rel, "symlink with an empty target")
    if target.startswith("/"):
        if container_links:
            return
        raise UnsafeArchive(rel, f"symlink to the absolute path {target!r}")
    parts = [p for p in target.split("/") if p not in ("", ".")]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    if ".." in parts[ups:]:
        raise UnsafeArchive(rel, f"symlink target {target!r} has '..' after a name")
    if ups > rel.count("/"):
        raise UnsafeArchive(rel, f"symlink to {target!r} points outside the target")


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
        stream = _TarStream(decompressed)
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

