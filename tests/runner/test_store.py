"""The object store contract, run against both backends: a local folder, and S3 over HTTP (moto's server)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.errors import ConfigError
from config.settings import Settings, StorageSettings, parse_settings
from runner.store import (
    FileStore, ObjectMissing, ObjectStore, S3Location, S3Store, StoreError, check_key, open_store,
)

SETUP_HINT = "run scripts/setup (it installs forgeci with its test extra, which brings moto[server])"
MB = 1 << 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoServer:
    """moto's standalone S3 server in a subprocess on a loopback port: a real HTTP server that tests can stop."""

    def __init__(self) -> None:
        try:
            import moto.server  # noqa: F401
        except ImportError as exc:
            pytest.fail(f"moto's server is missing ({exc}): {SETUP_HINT}")
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, bucket: str) -> str:
        return f"s3://{bucket}?endpoint={self.endpoint}"

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"moto's server exited with {self.proc.returncode}: {SETUP_HINT}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{self.endpoint}/", timeout=1).close()
                return
            time.sleep(0.1)
        pytest.fail("moto's server did not answer within 60s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def store(self, bucket: str | None = None, **kwargs: object) -> S3Store:
        location = S3Location.parse(self.url(bucket or f"b{uuid.uuid4().hex[:12]}"))
        return S3Store(location, "test-key", "test-secret", **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    yield server
    server.stop()


def s3_store(request: pytest.FixtureRequest, **kwargs: object) -> S3Store:
    """An S3 store for a contract test: on moto's server, or on the server FORGECI_TEST_S3_URL names (a real MinIO,
    see the README), under a prefix of its own so tests never see each other's objects."""
    url = os.environ.get("FORGECI_TEST_S3_URL")
    if not url:
        return request.getfixturevalue("moto_server").store(**kwargs)  # type: ignore[no-any-return]
    base = S3Location.parse(url)
    location = dataclasses.replace(base, prefix=f"{base.prefix}test-{uuid.uuid4().hex[:12]}/")
    return S3Store(location, os.environ.get("FORGECI_TEST_S3_ACCESS_KEY"),
                   os.environ.get("FORGECI_TEST_S3_SECRET_KEY"), **kwargs)  # type: ignore[arg-type]


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    """Each backend in turn; S3 with small parts and ranges, so multipart and ranged GETs run on small objects."""
    if request.param == "file":
        made: ObjectStore = FileStore(tmp_path / "store")
    else:
        # Objects of 4 MB and more go through parallel ranged GETs, smaller ones through one streamed GET.
        made = s3_store(request, part_size=5 * MB, range_size=1 * MB, parallel=3, ranged_from=4 * MB)
    yield made
    made.close()


def read_all(store: ObjectStore, key: str) -> bytes:
    with store.get_stream(key) as stream:
        return b"".join(iter(lambda: stream.read(300_000), b""))


def test_put_and_get_stream_and_file(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(12 * MB + 123)  # several multipart parts and ranged GETs on S3
    info = store.put_stream("caches/a/b.tar.zst", io.BytesIO(data))
    assert (info.key, info.size) == ("caches/a/b.tar.zst", len(data))
    assert read_all(store, "caches/a/b.tar.zst") == data
    store.get_file("caches/a/b.tar.zst", tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == data
    source = tmp_path / "small"
    source.write_bytes(b"hello")
    assert store.put_file("x/small", source).size == 5
    assert read_all(store, "x/small") == b"hello"
    assert store.stat("x/small").size == 5 and store.stat("x/small").modified > time.time() - 3600


def test_empty_object(store: ObjectStore) -> None:
    store.put_stream("e/empty", io.BytesIO(b""))
    assert store.stat("e/empty").size == 0 and read_all(store, "e/empty") == b""


def test_missing_objects(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(ObjectMissing):
        store.stat("no/such")
    with pytest.raises(ObjectMissing):
        with store.get_stream("no/such"):
            pass
    with pytest.raises(ObjectMissing):
        store.get_file("no/such", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    store.delete("no/such")  # deleting what is not there is fine


def test_list_by_prefix_and_delete(store: ObjectStore) -> None:
    for key in ("snapshots/1/a", "snapshots/12/b", "snapshots/2/c", "caches/r/x"):
        store.put_stream(key, io.BytesIO(key.encode()))
    assert [o.key for o in store.list("snapshots/1")] == ["snapshots/1/a", "snapshots/12/b"]
    assert [o.key for o in store.list("snapshots/1/")] == ["snapshots/1/a"]
    assert {o.key for o in store.list("")} == {"snapshots/1/a", "snapshots/12/b", "snapshots/2/c", "caches/r/x"}
    assert [(o.key, o.size) for o in store.list("caches/")] == [("caches/r/x", len("caches/r/x"))]
    store.delete("snapshots/12/b")
    assert [o.key for o in store.list("snapshots/")] == ["snapshots/1/a", "snapshots/2/c"]
    assert list(store.list("nothing/")) == []


def test_invalid_keys_are_refused(store: ObjectStore) -> None:
    for key in ("", "/abs", "a/../b", "a//b", "./a", "a/.", ".tmp/x", "a\\b", "a\0b", "x" * 1025):
        with pytest.raises(StoreError):
            store.put_stream(key, io.BytesIO(b"x"))
        with pytest.raises(StoreError):
            check_key(key)


def test_a_failing_stream_leaves_no_object(store: ObjectStore) -> None:
    class Broken:
        def __init__(self) -> None:
            self.sent = 0

        def read(self, size: int = -1) -> bytes:
            if self.sent > 6 * MB:  # after the first multipart part went up
                raise RuntimeError("the producer died")
            self.sent += MB
            return os.urandom(MB)

    with pytest.raises(RuntimeError):
        store.put_stream("half/written", Broken())
    with pytest.raises(ObjectMissing):
        store.stat("half/written")
    assert list(store.list("half/")) == []


def test_concurrent_writers_of_one_key_each_win_whole(tmp_path: Path) -> None:
    # File backend only: on S3 this is the server's job, and moto's in-memory server races on it (a 500 from a
    # closed buffer while it computes the ETag), which MinIO and S3 do not.
    store = FileStore(tmp_path / "store")
    payloads = [bytes([i]) * (2 * MB + i) for i in range(4)]
    errors: list[BaseException] = []

    def write(data: bytes) -> None:
        try:
            store.put_stream("same/key", io.BytesIO(data))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert read_all(store, "same/key") in payloads  # one writer's object, whole


def test_health_of_a_working_store(store: ObjectStore) -> None:
    health = store.health(max_age=0)
    assert health.ok and health.error is None and health.url == store.url
    assert "test-secret" not in str(health.to_dict())


# -- file backend specifics -------------------------------------------------------------------------


def test_file_store_writes_are_atomic(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    store.put_stream("k", io.BytesIO(b"old"))
    seen: list[bytes] = []

    class Slow:
        def __init__(self) -> None:
            self.parts = [b"new-" * 1000, b"more"]

        def read(self, size: int = -1) -> bytes:
            seen.append((tmp_path / "store" / "k").read_bytes())  # a reader in the middle of the write
            return self.parts.pop(0) if self.parts else b""

    store.put_stream("k", Slow())
    assert set(seen) == {b"old"}
    assert (tmp_path / "store" / "k").read_bytes() == b"new-" * 1000 + b"more"
    assert list((tmp_path / "store" / ".tmp").iterdir()) == []  # nothing left behind
    assert [o.key for o in store.list("")] == ["k"]  # the temporary folder is not an object


def test_file_store_delete_removes_empty_folders(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    store.put_stream("a/b/c/d", io.BytesIO(b"x"))
    store.put_stream("a/keep", io.BytesIO(b"x"))
    store.delete("a/b/c/d")
    assert not (tmp_path / "store" / "a" / "b").exists() and (tmp_path / "store" / "a" / "keep").exists()


def test_file_store_health_when_its_folder_is_gone(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    os.rename(tmp_path / "store", tmp_path / "moved")
    health = store.health(max_age=0)
    assert not health.ok and "tmp" in (health.error or "")
    with pytest.raises(StoreError):
        store.put_stream("k", io.BytesIO(b"x"))


# -- S3 specifics ---------------------------------------------------------------------------------


def test_s3_creates_its_bucket_and_keeps_a_prefix(moto_server: MotoServer) -> None:
    bucket = f"fresh{uuid.uuid4().hex[:10]}"
    store = S3Store(S3Location.parse(f"s3://{bucket}/ci/forge?endpoint={moto_server.endpoint}"), "k", "s")
    assert list(store.list("")) == []  # no bucket yet: empty, not an error
    store.put_stream("a/b", io.BytesIO(b"data"))
    raw = S3Store(S3Location.parse(moto_server.url(bucket)), "k", "s")
    assert [o.key for o in raw.list("")] == ["ci/forge/a/b"]
    assert [o.key for o in store.list("a/")] == ["a/b"]


def test_s3_down_fails_fast_with_retries_and_reports_it(moto_server: MotoServer) -> None:
    dead = S3Store(S3Location.parse(f"s3://dead?endpoint=http://127.0.0.1:{free_port()}"), "k", "s", backoff=0.05)
    started = time.monotonic()
    with pytest.raises(StoreError, match="connection refused"):
        dead.stat("k")
    with pytest.raises(StoreError):
        dead.put_stream("k", io.BytesIO(b"x"))
    assert time.monotonic() - started < 30
    health = dead.health(max_age=0)
    assert not health.ok and "connection refused" in (health.error or "")


class SilentServer:
    """A TCP server that accepts every connection and never sends a byte, like a store that hangs."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []  # kept open: a closed socket would be an answer of sorts
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(client)

    def close(self) -> None:
        self.listener.close()
        for sock in self.held:
            sock.close()


def test_s3_gives_up_on_a_silent_store_after_the_configured_read_timeout(tmp_path: Path) -> None:
    silent = SilentServer()
    try:
        text = (f'data_dir = "{tmp_path}"\n[storage]\nurl = "s3://silent?endpoint=http://127.0.0.1:{silent.port}"\n'
                'connect_timeout = "1s"\nread_timeout = "1s"\n')
        store = open_store(parse_settings(text, "forgeci.toml"), {})
        assert isinstance(store, S3Store)
        store.backoff = 0.05  # the waiting under test is the timeouts', not the back-off's
        started = time.monotonic()
        with pytest.raises(StoreError, match="timed out"):
            store.stat("k")
        # Every request waits read_timeout, a few are tried: seconds, where the 30 s default would take minutes.
        assert time.monotonic() - started < 20
        started = time.monotonic()
        health = store.health(max_age=0)
        assert not health.ok and "timed out" in (health.error or "")
        assert time.monotonic() - started < 4  # one try of read_timeout (the probe's cap, 5 s, is not reached)
        assert silent.held, "the server took the connections: the timeouts were the read's, not the connect's"
    finally:
        silent.close()


class CuttingProxy:
    """A TCP proxy in front of moto that breaks the connection of the next response once it has passed `cut_after`
    bytes, like a network that drops mid-download."""

    def __init__(self, upstream: int, cut_after: int) -> None:
        self.upstream = upstream
        self.cut_after = cut_after
        self.armed = False
        self.cuts = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, response: bool) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
                sent += len(data)
                if response and self.armed and sent > self.cut_after:
                    self.armed = False
                    self.cuts += 1
                    break
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("ranged", [False, True])
def test_s3_download_resumes_after_a_broken_connection(moto_server: MotoServer, ranged: bool) -> None:
    bucket = f"cut{uuid.uuid4().hex[:10]}"
    data = os.urandom(6 * MB)
    moto_server.store(bucket).put_stream("big", io.BytesIO(data))
    proxy = CuttingProxy(moto_server.port, cut_after=int(2.5 * MB))
    try:
        store = S3Store(S3Location.parse(f"s3://{bucket}?endpoint=http://127.0.0.1:{proxy.port}"), "k", "s",
                        range_size=4 * MB, parallel=2, ranged_from=MB if ranged else 100 * MB, backoff=0.05)
        proxy.armed = True
        assert read_all(store, "big") == data
        assert proxy.cuts == 1
    finally:
        proxy.close()


def test_s3_location_parsing() -> None:
    loc = S3Location.parse("s3://bucket/some/prefix?endpoint=http://minio.local:9000&region=eu")
    assert (loc.bucket, loc.prefix, loc.endpoint, loc.secure, loc.region) == (
        "bucket", "some/prefix/", "minio.local:9000", False, "eu")
    assert S3Location.parse("s3://bkt?endpoint=minio:9000&secure=false").secure is False
    assert S3Location.parse("s3://bkt?endpoint=https://minio:9000").secure is True
    assert S3Location.parse("s3://bkt").endpoint == "s3.amazonaws.com"
    for bad in ("s3://", "s3://bkt?endpoint=http://u:p@host", "s3://bkt?secure=maybe", "s3://bkt?bucket=x",
                "s3://bkt/../x?endpoint=h", "s3://B_ad?endpoint=h", "s3://b?endpoint=h"):
        with pytest.raises(ConfigError):
            S3Location.parse(bad)


def test_open_store_from_settings(tmp_path: Path, moto_server: MotoServer) -> None:
    base = dataclasses.replace(Settings.default(), data_dir=tmp_path)
    local = open_store(base, {})
    assert isinstance(local, FileStore) and local.root == tmp_path / "store"
    storage = StorageSettings(url=moto_server.url("fromsettings"), access_key_env="AK", secret_key_env="SK")
    s3 = open_store(dataclasses.replace(base, storage=storage), {"AK": "id", "SK": "very-secret-value"})
    assert isinstance(s3, S3Store) and "very-secret-value" not in s3.url
    s3.put_stream("k", io.BytesIO(b"v"))
    assert read_all(s3, "k") == b"v"
    with pytest.raises(ConfigError):
        open_store(dataclasses.replace(base, storage=StorageSettings(url="file://relative/path")), {})


async def test_healthz_reports_the_store(settings: Settings) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from bot.app import create_app
    from tests.fake_engine import FakeEngine

    base = settings  # on the fake engine, which answers: only the store decides
    async with TestClient(TestServer(create_app(base, {}, workers=False, engine=FakeEngine()))) as client:
        body = await (await client.get("/healthz")).json()
        assert body["store"]["ok"] is True and body["store"]["url"] == f"file://{settings.data_dir}/store"
    dead = StorageSettings(url=f"s3://down?endpoint=http://127.0.0.1:{free_port()}", secret_key_env="SK")
    down = dataclasses.replace(base, storage=dead)
    async with TestClient(TestServer(create_app(down, {"SK": "do-not-leak-me"}, workers=False,
                                                engine=FakeEngine()))) as client:
        response = await client.get("/healthz")
        body = await response.json()
        assert response.status == 200 and body["status"] == "degraded"  # jobs still run without the store
        assert body["store"]["ok"] is False and "connection refused" in body["store"]["error"]
        assert "do-not-leak-me" not in await response.text()
