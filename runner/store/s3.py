"""The s3:// store (MinIO, Ceph, Garage, AWS...) through the minio client: multipart uploads, ranged GETs, retries."""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from config.errors import ConfigError
from runner.errors import ObjectMissing, StoreError
from runner.store.base import CHUNK, ObjectInfo, ObjectStore, check_key
from runner.streams import Readable

T = TypeVar("T")

PART_SIZE = 16 << 20  # multipart part: in memory once per parallel upload
RANGE_SIZE = 16 << 20  # ranged GET of large objects
PARALLEL = 4  # concurrent part uploads and ranged GETs
RANGED_FROM = 128 << 20  # objects this large are read as parallel ranged GETs, smaller ones as one stream
ATTEMPTS = 3  # per idempotent request, with exponential backoff
BACKOFF = 0.4
# The defaults of storage.connect_timeout and storage.read_timeout, for stores built without settings (tests, bench).
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
