"""Signed, expiring download links of artifacts: HMAC-SHA256 over the path and expiry, with a key in the data dir."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlencode

from bot.errors import HTTPError
from config.errors import ConfigError

log = logging.getLogger(__name__)

KEY_FILE = "artifact-links.key"
KEY_BYTES = 32
DOWNLOAD_PREFIX = "/artifacts/dl"


def load_key(data_dir: Path) -> bytes:
    """The server's link key: made on first start (mode 0600, never readable by anyone else), then read back."""
    path = data_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if stat.S_IMODE(os.stat(path).st_mode) & 0o077:
            log.warning("%s was readable by others: made private (links signed with it can be forged meanwhile)",
                        path)
            os.chmod(path, 0o600)
        try:
            key = bytes.fromhex(path.read_text().strip())
        except ValueError:
            raise ConfigError("is not a hex key: delete it, and a new key is made", str(path)) from None
        if len(key) < KEY_BYTES:
            raise ConfigError(f"holds {len(key)} bytes, not {KEY_BYTES}: delete it, and a new key is made (old links "
                              f"stop working)", str(path))
        return key
    key = secrets.token_bytes(KEY_BYTES)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return key


class LinkSigner:
    """Signs the (decoded) path of a download with its expiry; a link is the path, `expires` and `sig`."""

    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self.clock = clock

    def __repr__(self) -> str:
        return "LinkSigner(key=...)"  # never the key

    def signature(self, path: str, expires: int) -> str:
        message = f"{path}\n{expires}".encode("utf-8", "surrogateescape")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def link(self, path: str, expires: int) -> str:
        """`path` (not yet encoded) as a URL path and query that download it until unix time `expires`."""
        query = urlencode({"expires": str(expires), "sig": self.signature(path, expires)})
        return f"{quote(path, safe='/')}?{query}"

    def check(self, path: str, expires_text: str | None, sig: str | None) -> None:
        """Raise a 403 unless the link is unexpired and its signature is this path's: one changed character of
        the path, the expiry or the signature and it grants nothing."""
        if not expires_text or not sig or not expires_text.isascii() or not expires_text.isdigit() \
                or len(expires_text) > 12:
            raise HTTPError(403, "forbidden", "a download link needs its `expires` and `sig`: get one from "
                                              "GET /artifacts")
        expected = self.signature(path, int(expires_text))
        if not hmac.compare_digest(sig.encode("utf-8", "surrogateescape"), expected.encode()):
            raise HTTPError(403, "forbidden", "the link's signature does not match: get a new link from "
                                              "GET /artifacts")
        if int(expires_text) < self.clock():
            raise HTTPError(403, "forbidden", "the link has expired: get a new one from GET /artifacts")


def archive_path(artifact_id: int, tar: bool = False) -> str:
    return f"{DOWNLOAD_PREFIX}/{artifact_id}/archive.tar{'' if tar else '.zst'}"


def zip_path(artifact_id: int) -> str:
    return f"{DOWNLOAD_PREFIX}/{artifact_id}/archive.zip"


def file_path(artifact_id: int, path: str) -> str:
    return f"{DOWNLOAD_PREFIX}/{artifact_id}/files/{path}"
