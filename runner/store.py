"""The object store of caches and snapshots: one interface over a local folder (file://) and S3 (s3://, minio)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

from config.errors import ConfigError
from config.settings import Settings, env_value
from runner.errors import RunnerError

T = TypeVar("T")
CHUNK = 1 << 20
MAX_KEY = 1024  # S3's limit, in UTF-8 bytes
TMP = ".tmp"  # the file store's folder of unfinished writes, at its root: never a key
HEALTH_MAX_AGE = 5.0  # seconds a health result is reused: /healthz is polled, the store need not be


class StoreError(RunnerError):
    """The object store failed: unreachable, refused the request, or a local I/O error. Jobs carry on without it."""


class ObjectMissing(StoreError):
    """No object has that key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no object {key!r} in the store")
        self.key = key


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


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


# --------------------------------------------------------------------------------------------------
# file://DIR
# --------------------------------------------------------------------------------------------------


class FileStore(ObjectStore):
    """Objects as files under `root`. A write goes to `root/.tmp`, is fsynced and renamed into place: readers see
    the old object or the new one, never a part, and concurrent writers of one key each win whole."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = Path(root).absolute()
        self.url = f"file://{self.root}"
        try:
            (self.root / TMP).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the store folder {self.root}: {exc.strerror}") from exc

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _io(self, what: str, func: Callable[[], T]) -> T:
        try:
            result = func()
        except ObjectMissing:
            self._record(None)
            raise
        except OSError as exc:
            self._record(f"{what}: {exc}")
            raise StoreError(f"{what}: {exc.strerror or exc}") from exc
        self._record(None)
        return result

    def _write(self, key: str, fill: Callable[[BinaryIO], None]) -> ObjectInfo:
        target = self._path(key)
        tmp = self.root / TMP / f"{uuid.uuid4().hex}"

        def write() -> ObjectInfo:
            try:
                with open(tmp, "xb") as out:
                    fill(out)
                    out.flush()
                    os.fsync(out.fileno())
                for _ in range(3):  # a concurrent delete may remove an empty parent folder in between
                    target.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        os.replace(tmp, target)
                        break
                    except FileNotFoundError:
                        continue
                else:
                    raise OSError(f"cannot move the new object into {target.parent}")
                _fsync_dir(target.parent)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            return self._info(key, target)

        return self._io(f"writing {key}", write)

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        def fill(out: BinaryIO) -> None:
            with open(path, "rb") as source:
                shutil.copyfileobj(source, out, CHUNK)

        return self._write(key, fill)

    def put_stream(self, key: str, stream: Readable) -> ObjectInfo:
        def fill(out: BinaryIO) -> None:
            while data := stream.read(CHUNK):
                out.write(data)

        return self._write(key, fill)

    def get_file(self, key: str, path: Path) -> ObjectInfo:
        source = self._path(key)

        def copy() -> ObjectInfo:
            try:
                shutil.copyfile(source, path)
            except FileNotFoundError:
                if not source.exists():
                    raise ObjectMissing(key) from None
                raise
            return self._info(key, source)

        return self._io(f"reading {key}", copy)

    @contextlib.contextmanager
    def get_stream(self, key: str) -> Iterator[Readable]:
        source = self._path(key)

        def open_it() -> BinaryIO:
            try:
                return open(source, "rb")
            except FileNotFoundError:
                raise ObjectMissing(key) from None

        with self._io(f"reading {key}", open_it) as stream:
            yield stream

    def stat(self, key: str) -> ObjectInfo:
        def stat() -> ObjectInfo:
            try:
                return self._info(key, self._path(key))
            except FileNotFoundError:
                raise ObjectMissing(key) from None

        return self._io(f"looking up {key}", stat)

    @staticmethod
    def _info(key: str, path: Path) -> ObjectInfo:
        st = os.stat(path)
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only the deepest folder the prefix names in full.
        folder = prefix.rpartition("/")[0]
        if folder:
            check_key(folder)
        start = self.root / folder if folder else self.root
        found: list[ObjectInfo] = []

        def walk() -> None:
            for dirpath, dirnames, filenames in os.walk(start):
                rel = os.path.relpath(dirpath, self.root)
                rel = "" if rel == "." else rel + "/"
                if not rel:
                    dirnames[:] = [d for d in dirnames if d != TMP]
                dirnames.sort()
                for name in sorted(filenames):
                    key = rel + name
                    if key.startswith(prefix):
                        with contextlib.suppress(FileNotFoundError):  # deleted while we walked
                            found.append(self._info(key, Path(dirpath) / name))

        self._io(f"listing {prefix or 'the store'}", walk)
        yield from found

    def delete(self, key: str) -> None:
        target = self._path(key)

        def delete() -> None:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            parent = target.parent
            while parent != self.root:  # empty folders go too, or the store fills with them
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent

        self._io(f"deleting {key}", delete)

    def check(self) -> None:
        def probe() -> None:
            if not os.access(self.root / TMP, os.W_OK | os.X_OK):
                raise OSError(f"{self.root / TMP} is not writable")

        self._io("checking the store", probe)

    def clean_tmp(self, older_than: float) -> int:
        """Remove unfinished writes a crash left, older than `older_than` (unix time); returns how many."""
        removed = 0
        for entry in os.scandir(self.root / TMP):
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime < older_than:
                    os.unlink(entry.path)
                    removed += 1
        return removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------
# s3://BUCKET[/PREFIX]?endpoint=...&secure=...&region=...
# --------------------------------------------------------------------------------------------------

PART_SIZE = 16 << 20  # multipart part: in memory once per parallel upload
RANGE_SIZE = 16 << 20  # ranged GET of large objects
PARALLEL = 4  # concurrent part uploads and ranged GETs
RANGED_FROM = 128 << 20  # objects this large are read as parallel ranged GETs, smaller ones as one stream
ATTEMPTS = 3  # per idempotent request, with exponential backoff
BACKOFF = 0.4
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 30.0
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_TRANSIENT_CODES = {"InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed"}


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str
    endpoint: str  # host[:port]
    secure: bool
    region: str | None

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """`s3://BUCKET[/PREFIX]?endpoint=http://HOST:9000&secure=false&region=R`; ConfigError when malformed."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigError(f"expected s3://BUCKET?endpoint=..., got {url!r}", source="storage.url")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint", "secure", "region"}
        if unknown:
            raise ConfigError(f"unknown parameter(s) {', '.join(sorted(unknown))} in {url!r} "
                              f"(expected endpoint, secure, region)", source="storage.url")
        endpoint = query.get("endpoint", "s3.amazonaws.com")
        secure = True
        if "://" in endpoint:
            scheme, _, endpoint = endpoint.partition("://")
            secure = scheme.lower() == "https"
        endpoint = endpoint.rstrip("/")
        if "secure" in query:
            if query["secure"].lower() not in ("true", "false", "1", "0"):
                raise ConfigError(f"secure must be true or false in {url!r}", source="storage.url")
            secure = query["secure"].lower() in ("true", "1")
        if not endpoint or "/" in endpoint or "@" in endpoint:
            raise ConfigError(f"endpoint must be host[:port] (credentials come from the environment) in {url!r}",
                              source="storage.url")
        if not _BUCKET.fullmatch(parts.netloc):
            raise ConfigError(f"invalid bucket name {parts.netloc!r} in {url!r} (3-63 of a-z, 0-9, '.', '-')",
                              source="storage.url")
        prefix = parts.path.strip("/")
        try:
            if prefix:
                check_key(prefix)
        except StoreError:
            raise ConfigError(f"invalid key prefix {prefix!r} in {url!r}", source="storage.url") from None
        return cls(parts.netloc, prefix + "/" if prefix else "", endpoint, secure, query.get("region"))

    @property
    def url(self) -> str:
        scheme = "https" if self.secure else "http"
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/") + f"?endpoint={scheme}://{self.endpoint}"


class S3Store(ObjectStore):
    """Objects in an S3 bucket (MinIO, Ceph, Garage, AWS...) through the minio client: multipart uploads, parallel
    ranged GETs for large objects, the bucket created on first write, retries with backoff on transient errors."""

    def __init__(
        self, location: S3Location, access_key: str | None, secret_key: str | None, *,
        part_size: int = PART_SIZE, range_size: int = RANGE_SIZE, parallel: int = PARALLEL,
        ranged_from: int = RANGED_FROM, attempts: int = ATTEMPTS, backoff: float = BACKOFF,
        connect_timeout: float = CONNECT_TIMEOUT, read_timeout: float = READ_TIMEOUT,
    ) -> None:
        import urllib3
        from minio import Minio

        super().__init__()
        self.location = location
        self.bucket = location.bucket
        self.url = location.url
        self.part_size = part_size
        self.range_size = range_size
        self.parallel = parallel
        self.ranged_from = ranged_from
        self.attempts = attempts
        self.backoff = backoff
        # urllib3 retries a failed connection or a 5xx once more at once; the loop in _call does the backing off.
        retries = urllib3.Retry(total=2, connect=1, read=1, status=1, backoff_factor=0.1,
                                status_forcelist=(500, 502, 503, 504), raise_on_status=False)

        def client(retry: urllib3.Retry, connect: float, read: float) -> Minio:
            http = urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=connect, read=read), maxsize=parallel + 2,
                retries=retry, cert_reqs="CERT_REQUIRED",
                ca_certs=os.environ.get("SSL_CERT_FILE") or _default_ca(),
            )
            return Minio(location.endpoint, access_key=access_key or None, secret_key=secret_key or None,
                         secure=location.secure, region=location.region, http_client=http)

        self.client = client(retries, connect_timeout, read_timeout)
        # Health checks: one quick try, so /healthz answers within seconds even when the store hangs.
        self._probe = client(urllib3.Retry(0, read=False), min(connect_timeout, 2.0), min(read_timeout, 5.0))
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    def _name(self, key: str) -> str:
        return self.location.prefix + check_key(key)

    # -- error handling ------------------------------------------------------------------------

    def _call(self, what: str, func: Callable[[], T], *, key: str | None = None, retry: bool = True) -> T:
        """Run one request, retrying transient failures with exponential backoff; StoreError when it gives up."""
        from minio.error import MinioException, S3Error, ServerError

        attempts = self.attempts if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                result = func()
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject") and key is not None:
                    self._record(None)
                    raise ObjectMissing(key) from None
                if exc.code not in _TRANSIENT_CODES or attempt == attempts:
                    self._record(f"{what}: {exc.code}")
                    raise StoreError(f"{what}: {exc.code}: {exc.message}") from exc
            except (ServerError, MinioException, OSError, _urllib3_error()) as exc:
                if attempt == attempts:
                    self._record(f"{what}: {_short(exc)}")
                    raise StoreError(f"{what} at {self.location.endpoint}: {_short(exc)}") from exc
            else:
                self._record(None)
                return result
            time.sleep(self.backoff * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        with self._bucket_lock:
            if self._bucket_ready:
                return
            from minio.error import S3Error

            def ensure() -> None:
                if not self.client.bucket_exists(self.bucket):
                    try:
                        self.client.make_bucket(self.bucket, location=self.location.region)
                    except S3Error as exc:  # another server created it meanwhile
                        if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                            raise

            self._call(f"creating bucket {self.bucket}", ensure)
            self._bucket_ready = True

    # -- operations ----------------------------------------------------------------------------

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        name = self._name(key)
        self._ensure_bucket()
        self._call(f"uploading {key}", lambda: self.client.fput_object(
            self.bucket, name, str(path), part_size=self.part_size, num_parallel_uploads=self.parallel))
        return self.stat(key)

    def put_stream(self, key: str, stream: Readable) -> ObjectInfo:
        name = self._name(key)
        self._ensure_bucket()
        # A stream cannot be rewound, so no retry of the whole upload; urllib3 still retries each part.
        self._call(f"uploading {key}", lambda: self.client.put_object(
            self.bucket, name, stream, length=-1, part_size=self.part_size,  # type: ignore[arg-type]
            num_parallel_uploads=self.parallel), retry=False)
        return self.stat(key)

    def stat(self, key: str) -> ObjectInfo:
        name = self._name(key)
        found = self._call(f"looking up {key}", lambda: self.client.stat_object(self.bucket, name), key=key)
        modified = found.last_modified.timestamp() if found.last_modified else 0.0
        return ObjectInfo(key, int(found.size or 0), modified)

    def _range(self, key: str, offset: int, length: int) -> bytes:
        name = self._name(key)

        def fetch() -> bytes:
            response = self.client.get_object(self.bucket, name, offset=offset, length=length)
            try:
                data = response.read()
            finally:
                response.close()
                response.release_conn()
            if len(data) != length:
                raise OSError(f"short read: {len(data)} of {length} bytes at {offset}")
            return data

        return self._call(f"downloading {key}", fetch, key=key)

    @contextlib.contextmanager
    def get_stream(self, key: str) -> Iterator[Readable]:
        """A large object as parallel ranged GETs; a smaller one as one GET, streamed as it arrives (one stream
        keeps up with the extraction, and costs the server one request instead of many)."""
        info = self.stat(key)
        reader: _RangeReader | _StreamReader
        if info.size >= self.ranged_from:
            reader = _RangeReader(self, key, info.size)
        else:
            reader = _StreamReader(self, key, info.size)
        try:
            yield reader
        finally:
            reader.close()

    def get_file(self, key: str, path: Path) -> ObjectInfo:
        info = self.stat(key)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.ftruncate(fd, info.size)
                offsets = range(0, info.size, self.range_size)
                with ThreadPoolExecutor(self.parallel) as pool:
                    def piece(offset: int) -> None:
                        data = self._range(key, offset, min(self.range_size, info.size - offset))
                        os.pwrite(fd, data, offset)

                    for future in [pool.submit(piece, o) for o in offsets]:
                        future.result()
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            raise StoreError(f"writing {path}: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return info

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full = self.location.prefix + prefix
        strip = len(self.location.prefix)

        def listing() -> list[ObjectInfo]:
            return [ObjectInfo(str(o.object_name)[strip:], int(o.size or 0),
                               o.last_modified.timestamp() if o.last_modified else 0.0)
                    for o in self.client.list_objects(self.bucket, prefix=full, recursive=True)]

        try:
            yield from self._call(f"listing {prefix or 'the bucket'}", listing, key=prefix)
        except ObjectMissing:  # no bucket yet: nothing in it
            return

    def delete(self, key: str) -> None:
        name = self._name(key)
        try:
            self._call(f"deleting {key}", lambda: self.client.remove_object(self.bucket, name), key=key)
        except ObjectMissing:
            pass

    def check(self) -> None:
        from minio.error import MinioException

        try:
            self._probe.bucket_exists(self.bucket)
        except (MinioException, OSError, _urllib3_error()) as exc:
            raise StoreError(f"{self.location.endpoint}: {_short(exc)}") from exc

    def close(self) -> None:
        for client in (self.client, self._probe):
            client._http.clear()  # minio has no close(); its pool manager holds the sockets


class _StreamReader:
    """One GET read as it arrives; a connection that breaks resumes with a ranged GET from where it stopped."""

    def __init__(self, store: S3Store, key: str, size: int) -> None:
        self.store = store
        self.key = key
        self.size = size
        self.pos = 0
        self.response: Any = None

    def read(self, size: int = -1, /) -> bytes:
        if self.pos >= self.size:
            return b""
        want = CHUNK if size is None or size < 0 else size
        for attempt in range(1, self.store.attempts + 1):
            try:
                if self.response is None:
                    name, offset = self.store._name(self.key), self.pos
                    self.response = self.store._call(
                        f"downloading {self.key}",
                        lambda: self.store.client.get_object(self.store.bucket, name, offset=offset), key=self.key)
                data = self.response.read(want)
                if not data:
                    raise OSError(f"the connection ended at byte {self.pos} of {self.size}")
                self.pos += len(data)
                return bytes(data)
            except (OSError, _urllib3_error()) as exc:
                self._release()
                if attempt == self.store.attempts:
                    self.store._record(f"downloading {self.key}: {_short(exc)}")
                    raise StoreError(f"downloading {self.key}: {_short(exc)}") from exc
                time.sleep(self.store.backoff * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def _release(self) -> None:
        if self.response is not None:
            with contextlib.suppress(Exception):
                self.response.close()
                self.response.release_conn()
            self.response = None

    def close(self) -> None:
        self._release()


class _RangeReader:
    """An object read as a stream of ranged GETs, `parallel` of them in flight, handed out in order."""

    def __init__(self, store: S3Store, key: str, size: int) -> None:
        self.store = store
        self.key = key
        self.size = size
        self.next_offset = 0
        self.pool = ThreadPoolExecutor(store.parallel, thread_name_prefix="forgeci-s3-get")
        self.pending: deque[Future[bytes]] = deque()
        self.current = memoryview(b"")
        for _ in range(store.parallel):
            self._submit()

    def _submit(self) -> None:
        if self.next_offset < self.size:
            length = min(self.store.range_size, self.size - self.next_offset)
            self.pending.append(self.pool.submit(self.store._range, self.key, self.next_offset, length))
            self.next_offset += length

    def read(self, size: int = -1, /) -> bytes:
        if not self.current:
            if not self.pending:
                return b""
            self.current = memoryview(self.pending.popleft().result())
            self._submit()
        take = len(self.current) if size is None or size < 0 else size
        out, self.current = self.current[:take], self.current[take:]
        return bytes(out)

    def close(self) -> None:
        for future in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)


def _urllib3_error() -> type[Exception]:
    import urllib3

    return urllib3.exceptions.HTTPError


def _short(exc: BaseException) -> str:
    """One line about a network failure: urllib3's messages repeat the whole retry history."""
    text = str(exc)
    for marker in ("Connection refused", "timed out", "Name or service not known", "Connection reset"):
        if marker in text:
            return marker.lower()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _default_ca() -> str:
    import certifi

    return certifi.where()


# --------------------------------------------------------------------------------------------------


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
        return S3Store(location, env_value(storage.access_key_env, environ), env_value(storage.secret_key_env, environ))
    raise ConfigError(f"expected a file:// or s3:// URL, got {url!r}", source="storage.url")
