"""The byte-stream protocol shared by the archive and the object store: anything with read(size)."""

from __future__ import annotations

from typing import Protocol


class Readable(Protocol):
    """A source of bytes read in pieces until b"" (a file, a socket's response, an archive being written)."""

    def read(self, size: int = -1, /) -> bytes: ...
