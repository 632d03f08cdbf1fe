"""Job logs: step output to numbered, masked lines in a JSON Lines file, published live to followers."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from runner.errors import LogError

STREAMS = frozenset({"stdout", "stderr", "system"})
MAX_LINE = 64 * 1024  # bytes of text in one line; longer output is split into chunks of at most this size
MIN_SECRET = 4  # shorter secret values are not masked: masking "1" or "ab" would garble ordinary output
MASK = b"***"
FOLLOW_QUEUE = 10_000  # live lines a follower may lag behind before it falls back to re-reading the file
POLL = 1.0  # seconds between checks of done() while a follower waits and no writer is active

_EOL = re.compile(rb"\r\n|\r|\n")  # a lone \r (a progress bar's redraw) ends a line too
_TAIL_BLOCK = 64 * 1024


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of a job's log, stored as `{"n": 1, "t": 1.5, "s": step, "o": stream, "x": text}`."""

    n: int  # 1-based within the job, continuing across attempts
    t: float  # unix time
    step: str  # "" for forgeci's own messages outside a step
    stream: str  # stdout | stderr | system
    text: str  # without the line end

    def to_json(self) -> str:
        """The line as one compact JSON object, without a newline."""
        obj = {"n": self.n, "t": self.t, "s": self.step, "o": self.stream, "x": self.text}
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | bytes) -> LogLine:
        """Parse what to_json wrote; LogError for anything else."""
        try:
            obj = json.loads(data)
            line = cls(obj["n"], float(obj["t"]), obj["s"], obj["o"], obj["x"])
        except (ValueError, TypeError, KeyError) as e:
            raise LogError(f"not a log line: {e}") from None
        valid = (
            type(line.n) is int
            and line.n >= 1
            and isinstance(line.step, str)
            and isinstance(line.stream, str)
            and line.stream in STREAMS
            and isinstance(line.text, str)
        )
        if not valid:
            raise LogError(f"not a log line: {obj!r:.200}")
        return line


def _encode(text: str) -> bytes:
    # surrogateescape: a secret read from the environment may hold bytes that are not UTF-8
    return text.encode("utf-8", "surrogateescape")


def _forms(value: bytes) -> set[bytes]:
    """The value and every part of its base64 encodings that does not depend on the bytes around it."""
    forms = {value}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(value)
        forms |= {whole, whole.rstrip(b"=")}
        for offset in range(3):
            # Inside a larger blob the value starts `offset` bytes into a 3-byte group: the first chars mix in
            # the bytes before it and the last one the bytes after it, so only the core between them is fixed.
            encoded = encode(bytes(offset) + value).rstrip(b"=")
            head = (0, 2, 3)[offset]
            tail = 1 if (offset + len(value)) % 3 else 0
            core = encoded[head : len(encoded) - tail]
            if len(core) >= MIN_SECRET:
                forms.add(core)
    return forms


class Masker:
    """Replaces secret values, and their standard and urlsafe base64 forms, with `***`.

    Values shorter than MIN_SECRET (4) characters are ignored: they would mask ordinary text everywhere.
    A multi-line value is also masked line by line, since logs are masked one line at a time.
    """

    __slots__ = ("_patterns", "_re")

    def __init__(self, secrets: Iterable[str]) -> None:
        patterns: set[bytes] = set()
        for secret in secrets:
            for value in {secret, *secret.splitlines()}:
                if len(value) >= MIN_SECRET:
                    patterns |= _forms(_encode(value))
        # Longest first: the regex takes the first alternative that matches, so a whole form beats its core.
        self._patterns = sorted(patterns, key=lambda p: (-len(p), p))
        self._re = re.compile(b"|".join(map(re.escape, self._patterns))) if patterns else None

    @classmethod
    def empty(cls) -> Masker:
        """A masker with no secrets."""
        return cls(())

    def __repr__(self) -> str:
        return f"Masker(<{len(self._patterns)} patterns>)"  # never the secrets themselves

    def mask(self, text: str) -> str:
        """The text with every secret form replaced by `***`."""
        return self.mask_bytes(_encode(text)).decode("utf-8", "surrogateescape")

    def mask_bytes(self, data: bytes) -> bytes:
        """The bytes with every secret form replaced by `***`."""
        return self._re.sub(MASK, data) if self._re else data

    def mask_prefix(self, data: bytes) -> tuple[bytes, int]:
        """Mask a chunk of a line that goes on, except its longest tail that could begin a secret.

        Returns the masked head and how many trailing bytes were held back (unmasked): the caller puts them
        in front of what follows, so a secret cut by the chunk boundary is still masked whole.
        """
        if self._re is None:
            return data, 0
        out: list[bytes] = []
        last = 0
        for match in self._re.finditer(data):
            out += (data[last : match.start()], MASK)
            last = match.end()
        keep = 0
        for pattern in self._patterns:
            for k in range(min(len(pattern) - 1, len(data) - last), keep, -1):
                if data.endswith(pattern[:k]):
                    keep = k
                    break
        out.append(data[last : len(data) - keep])
        return b"".join(out), keep


def _scan(path: Path, offset: int = 0) -> Iterator[tuple[LogLine, int]]:
    """Intact lines from byte `offset` on, each with the offset just past it.

    Stops before an unterminated tail (torn by a crash, or being written right now); skips a corrupt line
    rather than hiding the rest of the log.
    """
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return
    with file:
        file.seek(offset)
        for raw in file:
            if not raw.endswith(b"\n"):
                return
            offset += len(raw)
            try:
                line = LogLine.from_json(raw)
            except LogError:
                continue
            yield line, offset


def read_log(path: Path, after: int = 0) -> Iterator[LogLine]:
    """The log's lines with n > after, in order; a missing file has none, a torn last line is left out."""
    for line, _ in _scan(path):
        if line.n > after:
            yield line


def _last_number(file: BinaryIO, size: int) -> int:
    """The n of the file's last intact line, read backwards: a long log's tail is all that matters."""
    end, carry = size, b""
    while end:
        start = max(0, end - _TAIL_BLOCK)
        file.seek(start)
        pieces = (file.read(end - start) + carry).split(b"\n")
        carry = pieces.pop(0) if start else b""  # may be the end of a line that begins before `start`
        for raw in reversed(pieces):
            with suppress(LogError):
                return LogLine.from_json(raw).n
        end = start
    return 0


class JobLog:
    """Turns one job's step output into log lines: appends them to its file, then publishes them.

    Call it from the event loop's thread, like LogHub.publish. A retried job opens the same file again and
    numbering continues after its last line. With `max_bytes`, step output past that many bytes of this attempt's
    log (as stored) is dropped: one marker line says so when it starts, one at close counts what went; forgeci's
    own lines are always kept (a handful per step), so the outcome of a flooding job stays readable.
    """

    def __init__(
        self,
        path: Path,
        job_id: int,
        hub: LogHub | None,
        masker: Masker,
        clock: Callable[[], float] = time.time,
        max_line: int = MAX_LINE,
        on_line: Callable[[LogLine], None] | None = None,
        max_bytes: int = 0,
    ) -> None:
        if max_line < 4:
            raise ValueError("max_line must hold at least one UTF-8 character (4 bytes)")
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0 (0: no limit)")
        self.path = path
        self.job_id = job_id
        self.on_line = on_line
        self._hub = hub
        self._masker = masker
        self._clock = clock
        self._max_line = max_line
        self._max_bytes = max_bytes
        self._written = 0  # bytes this attempt appended (per attempt: a retry gets a whole log of its own)
        self.dropped_lines = 0
        self.dropped_bytes = 0
        self._pending: dict[tuple[str, str], bytearray] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a+b")
        size = self._file.seek(0, os.SEEK_END)
        self._n = _last_number(self._file, size)
        if hub is not None:  # several coordinators: an earlier attempt may have run (and logged) on another one
            self._n = max(self._n, hub.last_number(job_id))
        if size:
            self._file.seek(size - 1)
            if self._file.read(1) != b"\n":
                self._file.write(b"\n")  # a crash tore the last line: end it, so our first line stays intact
                self._file.flush()
        if hub is not None:
            hub.begin(job_id)

    def write(self, step: str, stream: str, data: bytes) -> None:
        """Add output of a step; every complete line (and every max_line chunk of a longer one) is emitted."""
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"stream must be stdout or stderr, not {stream!r}")
        self._check_open()
        buffer = self._pending.setdefault((step, stream), bytearray())
        start = max(len(buffer) - 1, 0)  # what was buffered holds no line end, except maybe a trailing \r
        buffer += data
        self._emit(step, stream, self._split(buffer, start, final=False))

    def flush(self, step: str) -> None:
        """Emit the step's unfinished lines (at the end of the step)."""
        for key in [key for key in self._pending if key[0] == step]:
            self._emit(step, key[1], self._split(self._pending.pop(key), 0, final=True))

    def system(self, text: str, step: str = "") -> LogLine:
        """Emit a message of forgeci itself (stream "system"), masked like step output."""
        self._check_open()
        data = self._masker.mask_bytes(text.rstrip("\r\n").encode("utf-8", "replace"))
        return self._emit(step, "system", [data])[0]

    def close(self) -> None:
        """Flush every step, close the file and tell the hub the log is complete; idempotent."""
        if self._file.closed:
            return
        try:
            for step in {step for step, _ in self._pending}:
                self.flush(step)
            if self.dropped_lines:
                self.system(f"{self.dropped_lines} line(s) ({self.dropped_bytes} bytes) of step output were dropped "
                            f"past the log limit (runner.max_log_bytes = {self._max_bytes})")
        finally:
            self._file.close()
            if self._hub is not None:
                self._hub.finish(self.job_id)

    def __enter__(self) -> JobLog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._file.closed:
            raise LogError(f"the log of job {self.job_id} is closed")

    def _split(self, buffer: bytearray, start: int, final: bool) -> list[bytes]:
        """Cut complete lines, and max_line chunks of longer ones, off the front of buffer; return them masked.

        Works on bytes so that only whole lines (or chunks cut between characters) are decoded: a UTF-8
        character split across two writes stays intact.
        """
        out: list[bytes] = []
        pos = 0
        while pos < len(buffer):
            eol = _EOL.search(buffer, max(pos, start))
            if eol and not final and eol.group() == b"\r" and eol.end() == len(buffer):
                eol = None  # the \n of a \r\n may come with the next write
            end = eol.start() if eol else len(buffer)
            if end - pos > self._max_line:
                cut = pos + self._max_line
                for _ in range(3):  # back off to the start of a UTF-8 character
                    if buffer[cut] & 0xC0 != 0x80:
                        break
                    cut -= 1
                chunk = bytes(buffer[pos:cut])
                head, keep = self._masker.mask_prefix(chunk)
                if keep == len(chunk):  # max_line is shorter than a secret: mask what can be masked
                    head, keep = self._masker.mask_bytes(chunk), 0
                out.append(head)
                pos = cut - keep
            elif eol:
                out.append(self._masker.mask_bytes(bytes(buffer[pos:end])))
                pos = eol.end()
            elif final:
                out.append(self._masker.mask_bytes(bytes(buffer[pos:])))
                pos = len(buffer)
            else:
                break
        del buffer[:pos]
        return out

    def _emit(self, step: str, stream: str, texts: list[bytes]) -> list[LogLine]:
        t = round(self._clock(), 3)
        lines: list[LogLine] = []
        stored: list[bytes] = []
        for text in texts:
            line = LogLine(self._n + 1, t, step, stream, text.decode("utf-8", "replace"))
            raw = line.to_json().encode() + b"\n"
            if stream != "system" and self._max_bytes and self._written + len(raw) > self._max_bytes:
                first = not self.dropped_lines
                self.dropped_lines += 1
                self.dropped_bytes += len(text)
                if self._hub is not None:
                    self._hub.count_dropped(1)
                if not first:
                    continue
                # The first line over the limit becomes a marker, so the log says where its output stops.
                line = LogLine(line.n, t, step, "system", f"log limit reached (runner.max_log_bytes = "
                               f"{self._max_bytes}): the rest of this job's step output is dropped")
                raw = line.to_json().encode() + b"\n"
            elif stream != "system":
                self._written += len(raw)
            self._n += 1
            lines.append(line)
            stored.append(raw)
        if not stored:
            return []
        self._file.write(b"".join(stored))
        # Before publishing: a follower that falls back to the file must find every line it was sent.
        self._file.flush()
        for line in lines:
            if self._hub is not None:
                self._hub.publish(self.job_id, line)
            if self.on_line is not None:
                self.on_line(line)
        return lines


@dataclass(eq=False)
class _Follower:
    """The live feed of one follow() call."""

    lines: deque[LogLine] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False  # the writer closed the log
    dropped: bool = False  # fell too far behind: gets no lines until it has re-read the file


class LogHub:
    """In-process pub/sub of live log lines for one event loop: call every method from the loop's thread."""

    def __init__(self, queue_size: int = FOLLOW_QUEUE, poll: float = POLL) -> None:
        self._queue_size = queue_size
        self._poll = poll
        self._followers: dict[int, set[_Follower]] = {}
        self._writing: set[int] = set()
        self.dropped_lines = 0  # step output lines over runner.max_log_bytes since start (a /metrics counter)

    def count_dropped(self, lines: int) -> None:
        """A job's log dropped `lines` lines over its limit (JobLog calls it)."""
        self.dropped_lines += lines

    def last_number(self, job_id: int) -> int:
        """The last line number of the job's log that this hub knows beyond its file (a cluster's database: see
        runner/cluster_logs.py); 0 here, where the file is the whole log."""
        return 0

    def read(self, job_id: int, path: Path, after: int = 0) -> list[LogLine]:
        """The job's lines with n > after, as written so far (blocks: call it in a thread)."""
        return list(read_log(path, after))

    def begin(self, job_id: int) -> None:
        """A writer is producing the job's log (JobLog calls it when opened)."""
        self._writing.add(job_id)

    def publish(self, job_id: int, line: LogLine) -> None:
        """Hand a line (already in the log file) to the job's followers; never blocks."""
        for follower in self._followers.get(job_id, ()):
            if follower.dropped:
                continue
            if len(follower.lines) >= self._queue_size:
                # Neither block the writer nor buffer without bound: the line is in the file, so the follower
                # re-reads the file from its last line. It stays registered, so finish() still reaches it.
                follower.dropped = True
                follower.lines.clear()
            else:
                follower.lines.append(line)
            follower.wake.set()

    def finish(self, job_id: int) -> None:
        """The job's log is complete: its followers end once they have yielded every line."""
        self._writing.discard(job_id)
        for follower in self._followers.pop(job_id, ()):
            follower.ended = True
            follower.wake.set()

    def followers(self, job_id: int) -> int:
        """How many followers get the job's live lines now (not those catching up from the file)."""
        return sum(not follower.dropped for follower in self._followers.get(job_id, ()))

    async def follow(
        self, job_id: int, path: Path, after: int = 0, *, done: Callable[[], bool]
    ) -> AsyncIterator[LogLine]:
        """Every line of the job's log with n > after, exactly once and in order: the file, then live lines.

        Ends when the writer finishes the log, or, while no writer is active, once `done()` says the job is
        terminal (checked after the replay and every `poll` seconds: a job may end without ever writing).
        Closing or cancelling the iteration unsubscribes.
        """
        last, offset = after, 0
        follower = _Follower()
        self._followers.setdefault(job_id, set()).add(follower)
        try:
            while True:
                # (Re)subscribed before reading the file: a line written meanwhile is then in the file or the
                # feed (the writer flushes the file before publishing), and n <= last drops what is in both.
                follower.dropped = False
                for line, offset in _scan(path, offset):
                    if line.n > last:
                        last = line.n
                        yield line
                while True:
                    while follower.lines:
                        line = follower.lines.popleft()
                        if line.n > last:
                            last = line.n
                            yield line
                    if follower.dropped:
                        break
                    if follower.ended or (job_id not in self._writing and done()):
                        return
                    follower.wake.clear()
                    with suppress(TimeoutError):
                        await asyncio.wait_for(follower.wake.wait(), self._poll)
        finally:
            self._unsubscribe(job_id, follower)

    def _unsubscribe(self, job_id: int, follower: _Follower) -> None:
        followers = self._followers.get(job_id)
        if followers is not None:
            followers.discard(follower)
            if not followers:
                del self._followers[job_id]
