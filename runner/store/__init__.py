"""The object store of caches and snapshots: one interface over a local folder (file://) and S3 (s3://, minio)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from config.errors import ConfigError
from config.settings import Settings, env_value
from runner.errors import ObjectMissing, StoreError
from runner.store.base import (
    CHUNK,
    HEALTH_MAX_AGE,
    MAX_KEY,
    TMP,
    ObjectInfo,
    ObjectStore,
    StoreHealth,
    check_key,
)
from runner.store.file import FileStore
from runner.store.s3 import S3Location, S3Store
from runner.streams import Readable

__all__ = [
    "CHUNK", "HEALTH_MAX_AGE", "MAX_KEY", "TMP", "FileStore", "ObjectInfo", "ObjectMissing", "ObjectStore",
    "Readable", "S3Location", "S3Store", "StoreError", "StoreHealth", "check_key", "open_store",
]


def open_store(settings: Settings, environ: Mapping[str, str]) -> ObjectStore:
    """The store `settings.store_url` names; no request is made (a store that is down must not stop a start)."""
    url = settings.store_url
    if url.startswith("file://"):
        path = url[len("file://"):]
        if not path.startswith("/"):
            raise ConfigError(f"a file:// store needs an absolute path, got {url!r}", source="storage.url")
        return FileStore(Path(path))
    if url.startswith("s3://"):
        location = S3Location.parse(url)
        storage = settings.storage
        return S3Store(location, env_value(storage.access_key_env, environ), env_value(storage.secret_key_env, environ),
                       connect_timeout=storage.connect_timeout, read_timeout=storage.read_timeout)
    raise ConfigError(f"expected a file:// or s3:// URL, got {url!r}", source="storage.url")
