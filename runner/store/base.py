"""What every object store shares: the ObjectStore interface, its values and errors, key checks, health."""

from __future__ import annotations

import contextlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import StoreError
from runner.streams import Readable

CHUNK = 1 << 20
MAX_KEY = 1024  # S3's limit, in UTF-8 bytes
TMP = ".tmp"  # the file store's folder of unfinished writes, at its root: never a key
HEALTH_MAX_AGE = 5.0  # seconds a health result is reused: /healthz is polled, the store need not be


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float  # unix time


@dataclass(frozen=True)
class StoreHealth:
    """The store's state as /healthz reports it: the URL never carries credentials."""

    ok: bool
    url: str
    error: str | None
    checked_at: float

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "url": self.url, "error": self.error, "checked_at": self.checked_at}


def check_key(key: str) -> str:
    """`key` if it is a safe object key: relative, `/`-separated names, none empty, `.` or `..`."""
    if not isinstance(key, str) or not key or len(key.encode("utf-8", "surrogateescape")) > MAX_KEY:
        raise StoreError(f"invalid object key {key!r}")
    parts = key.split("/")
    if any(p in ("", ".", "..") or "\0" in p or "\\" in p for p in parts) or parts[0] == TMP:
        raise StoreError(f"invalid object key {key!r}")
    return key


class ObjectStore(ABC):
    """Put from a file or stream, get to a file or stream, stat, list by prefix, delete. Every call blocks:
    callers on an event loop use asyncio.to_thread. Failures raise StoreError (ObjectMissing for a missing key)."""

    url: str  # for messages and /healthz: never with credentials

    def __init__(self) -> None:
        self._health = StoreHealth(True, "", None, 0.0)
        self._health_lock = threading.Lock()

    @abstractmethod
    def put_file(self, key: str, path: Path) -> ObjectInfo: ...

    @abstractmethod
    def put_stream(self, key: str, stream: Readable) -> ObjectInfo:
        """Store everything `stream.read()` returns until b""; an exception from it leaves no object behind."""

    @abstractmethod
    def get_file(self, key: str, path: Path) -> ObjectInfo: ...

    @abstractmethod
    def get_stream(self, key: str) -> contextlib.AbstractContextManager[Readable]: ...

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix` (a plain string prefix, not only whole folders)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing one is fine."""

    @abstractmethod
    def check(self) -> None:
        """Raise StoreError unless the store answers (cheap: one request)."""

    def close(self) -> None:
        pass

    def health(self, max_age: float = HEALTH_MAX_AGE) -> StoreHealth:
        """The last known state, checked again when older than `max_age` seconds."""
        with self._health_lock:
            if time.time() - self._health.checked_at < max_age:
                return self._health
            try:
                self.check()
            except StoreError as exc:
                self._record(str(exc))
            else:
                self._record(None)
            return self._health

    def _record(self, error: str | None) -> None:
        """Every call's outcome updates the health, so /healthz rarely needs a request of its own."""
        self._health = StoreHealth(error is None, self.url, error, time.time())
