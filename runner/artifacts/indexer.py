"""The file index of an artifact, made while it is packed: a push parser over the tar bytes that hashes each file."""

from __future__ import annotations

import hashlib
from typing import Any

from runner.errors import ArchiveError
from runner.queue import ArtifactFile

BLOCK = 512
REGULAR = (b"0", b"\0", b"7")
LONG_NAME = b"L"
MAX_NAME = 1 << 20


def _number(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256, for sizes of 8 GB and more
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    return int(text, 8) if text else 0


class TarIndexer:
    """ArchiveWriter's tap: sees the GNU tar stream tar writes and records (path, size, sha256) of every regular
    file, so that files are read once (by tar) and hashed as they stream by, not in a second pass. On the thread
    that feeds zstd: a hashing thread of its own measured slower here (its queue, and zstd's threads, on 2 cores)."""

    def __init__(self) -> None:
        self.files: list[ArtifactFile] = []
        self.ended = False
        self._header = bytearray()
        self._meta = bytearray()
        self._state = "header"  # header | data | meta | skip
        self._left = 0  # bytes left of the current data, meta or skip run
        self._pad = 0  # padding after the current data or meta
        self._name = ""
        self._size = 0
        self._long_name: str | None = None
        self._hash: Any = None

    def __call__(self, data: bytes) -> None:
        view = memoryview(data)
        pos = 0
        while pos < len(view) and not self.ended:
            if self._state == "header":
                take = min(BLOCK - len(self._header), len(view) - pos)
                self._header += view[pos:pos + take]
                pos += take
                if len(self._header) == BLOCK:
                    self._parse(bytes(self._header))
                    self._header.clear()
                continue
            take = min(self._left, len(view) - pos)
            if self._state == "data":
                self._hash.update(view[pos:pos + take])
            elif self._state == "meta":
                self._meta += view[pos:pos + take]
            pos += take
            self._left -= take
            if self._left == 0:
                self._end_run()

    def _parse(self, header: bytes) -> None:
        if header == bytes(BLOCK):
            self.ended = True
            return
        kind, size = header[156:157], _number(header[124:136])
        self._pad = -size % BLOCK
        if kind == LONG_NAME:
            if size > MAX_NAME:
                raise ArchiveError(f"a {size}-byte long name in the artifact's tar stream")
            self._start("meta", size)
        elif kind in REGULAR:
            self._name = self._long_name or header[0:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            self._long_name = None
            self._hash = hashlib.sha256()
            self._size = size
            self._start("data", size)
        else:
            self._long_name = None
            self._start("skip", size + self._pad)
            self._pad = 0

    def _start(self, state: str, size: int) -> None:
        self._state, self._left = state, size
        if size == 0:
            self._end_run()

    def _end_run(self) -> None:
        state, self._state = self._state, "header"
        if state == "data":
            self.files.append(ArtifactFile(self._name, self._size, self._hash.hexdigest()))
        elif state == "meta":
            self._long_name = bytes(self._meta).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            self._meta.clear()
        if state in ("data", "meta") and self._pad:
            self._state, self._left, self._pad = "skip", self._pad, 0
