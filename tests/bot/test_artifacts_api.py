"""`GET /artifacts` and the signed download links on both stores: whole archives, single files, ranges; expired and
tampered links, crafted paths, the link key, and who may list versus who may download."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import stat
import tarfile
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import zstandard
from aiohttp.test_utils import TestClient
from yarl import URL

from bot.artifact_links import KEY_FILE, LinkSigner, archive_path, file_path, load_key
from bot.artifacts import SIGNER, byte_range
from config.errors import ConfigError
from config.settings import Settings, StorageSettings, parse_settings
from runner.archive import CHUNK
from runner.artifacts.zipped import zip_chunks
from runner.errors import StoreError
from runner.models import JobSpec, JobState
from tests.bot.api_helpers import TOKEN, api_client, runtime_of, with_server
from tests.conftest import repo_maker
from tests.fake_engine import FakeEngine, Script
from tests.reliability.proxy import FaultProxy
from tests.runner.test_pipelines import by_display, finished
from tests.runner.test_store import MotoServer, moto_server

__all__ = ["moto_server"]

PIPELINE = '''
[jobs.build]
artifacts = { paths = ["dist/**", "coverage.xml"] }
steps = [{ run = "build" }]
[jobs.lint]
steps = [{ run = "lint" }]
'''
BLOB = os.urandom(3_000_000)
FILES = {"dist/app.bin": BLOB, "dist/docs/read me ü.txt": "spaces and ü", "coverage.xml": "<coverage/>"}


@dataclass
class Built:
    client: TestClient
    pipeline_id: int
    build: int
    lint: int
    listing: dict[str, Any]

    def path(self, url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.path}?{parts.query}"

    @property
    def artifact(self) -> dict[str, Any]:
        return self.listing["artifacts"][0]

    def file(self, path: str) -> dict[str, Any]:
        return next(f for f in self.artifact["files"] if f["path"] == path)


@pytest.fixture(params=["file", "s3"])
def store_settings(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Settings]:
    if request.param == "file":
        yield settings
        return
    server: MotoServer = request.getfixturevalue("moto_server")
    yield dataclasses.replace(settings, storage=StorageSettings(
        url=server.url(f"api{time.monotonic_ns() % 10**9}"), access_key_env="AK", secret_key_env="SK"))


@pytest.fixture
async def built(store_settings: Settings, tmp_path: Path) -> AsyncIterator[Built]:
    repo, _ = repo_maker(tmp_path, shared=False)({".forgeci.toml": PIPELINE})
    engine = FakeEngine()
    engine.on("build", Script(files=FILES))
    environ = {"AK": "test-key", "SK": "test-secret"}
    async with api_client(store_settings, environ, workers=True, engine=engine) as client:
        rt = runtime_of(client)
        submitted = await rt.control.submit_pipeline(JobSpec(repo=str(repo), ref="main"))
        jobs = by_display(await finished(rt, submitted.pipeline_id))
        response = await client.get(f"/artifacts?job={jobs['build'].id}")
        assert response.status == 200
        yield Built(client, submitted.pipeline_id, jobs["build"].id, jobs["lint"].id, await response.json())


async def test_the_listing_has_every_file_with_its_sha256_and_a_link(built: Built) -> None:
    artifact = built.artifact
    assert artifact["state"] == "kept" and artifact["job"] == "build" and "object" not in artifact
    assert {f["path"]: f["sha256"] for f in artifact["files"]} == {
        rel: hashlib.sha256(data if isinstance(data, bytes) else data.encode()).hexdigest() for rel, data in FILES.items()}
    assert artifact["links"]["archive"].startswith("http://127.0.0.1:8080/artifacts/dl/")  # server.public_url
    by_pipeline = await (await built.client.get(f"/artifacts?pipeline={built.pipeline_id}")).json()
    assert [a["job_id"] for a in by_pipeline["artifacts"]] == [built.build]  # lint keeps none
    assert (await (await built.client.get(f"/artifacts?job={built.lint}")).json())["artifacts"] == []
    for query, status in (("job=999", 404), ("pipeline=999", 404), ("job=x", 400), ("", 400),
                          (f"job=1&pipeline={built.pipeline_id}", 400), ("colour=red", 400)):
        response = await built.client.get(f"/artifacts?{query}")
        assert response.status == status, query
        assert set(await response.json()) == {"error", "detail"}


async def test_a_link_downloads_one_file_the_whole_archive_and_its_tar(built: Built) -> None:
    client = built.client
    response = await client.get(built.path(built.file("dist/app.bin")["url"]))
    assert response.status == 200 and await response.read() == BLOB
    assert response.headers["Content-Length"] == str(len(BLOB)) and response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["Content-Disposition"].startswith('attachment; filename="app.bin"')
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    odd = await client.get(built.path(built.file("dist/docs/read me ü.txt")["url"]))
    assert odd.status == 200 and (await odd.read()).decode() == "spaces and ü"
    assert "filename*=UTF-8''read%20me%20%C3%BC.txt" in odd.headers["Content-Disposition"]
    archive = await client.get(built.path(built.artifact["links"]["archive"]))
    data = await archive.read()
    assert archive.status == 200 and hashlib.sha256(data).hexdigest() == built.artifact["checksum"]
    assert archive.headers["Content-Disposition"].startswith(f'attachment; filename="build-{built.build}-artifacts.tar.zst"')
    plain = await client.get(built.path(built.artifact["links"]["tar"]))
    with tarfile.open(fileobj=io.BytesIO(await plain.read())) as tar:
        member = tar.extractfile("dist/app.bin")
        assert member is not None and member.read() == BLOB
    assert zstandard.ZstdDecompressor().decompressobj().decompress(data)[:100] == (await (await client.get(
        built.path(built.artifact["links"]["tar"]))).read())[:100]


async def test_ranges_and_head(built: Built) -> None:
    url = built.path(built.file("dist/app.bin")["url"])
    part = await built.client.get(url, headers={"Range": "bytes=1000-1999"})
    assert part.status == 206 and await part.read() == BLOB[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(BLOB)}"
    tail = await built.client.get(url, headers={"Range": "bytes=-10"})
    assert tail.status == 206 and await tail.read() == BLOB[-10:]
    beyond = await built.client.get(url, headers={"Range": f"bytes={len(BLOB)}-"})
    assert beyond.status == 416
    several = await built.client.get(url, headers={"Range": "bytes=0-1,5-6"})
    assert several.status == 200 and len(await several.read()) == len(BLOB)  # the whole file is a valid answer
    head = await built.client.head(url)
    assert head.status == 200 and head.headers["Content-Length"] == str(len(BLOB)) and await head.read() == b""


def flip(text: str) -> str:
    return text[:-1] + ("0" if text[-1] != "0" else "1")


async def test_expired_or_tampered_links_are_403_and_grant_nothing_else(built: Built) -> None:
    client, app = built.client, built.client.server.app
    url = built.path(built.file("coverage.xml")["url"])
    path, query = url.split("?")
    args = {k: v[0] for k, v in parse_qs(query).items()}
    signer: LinkSigner = app[SIGNER]
    artifact_id = built.artifact["id"]
    tampered = [
        f"{path}?expires={args['expires']}&sig={flip(args['sig'])}",  # one character of the signature
        f"{path[:-1]}m?expires={args['expires']}&sig={args['sig']}",  # one character of the path
        f"{path}?expires={int(args['expires']) + 1}&sig={args['sig']}",  # a later expiry
        f"{file_path(artifact_id, 'dist/app.bin')}?expires={args['expires']}&sig={args['sig']}",  # another file
        f"{archive_path(artifact_id)}?expires={args['expires']}&sig={args['sig']}",  # the whole artifact
        f"{path}?expires={args['expires']}",  # no signature
        path,
        f"{path}?expires=abc&sig={args['sig']}",
        f"/artifacts/dl/{artifact_id}/files/../../../../etc/passwd?expires={args['expires']}&sig={args['sig']}",
        f"/artifacts/dl/{artifact_id}/files/%2e%2e/%2e%2e/queue.db?expires={args['expires']}&sig={args['sig']}",
    ]
    past = int(time.time()) - 1
    tampered.append(signer.link(file_path(artifact_id, "coverage.xml"), past))  # signed, but expired
    for bad in tampered:
        response = await client.get(bad)
        assert response.status in (403, 404), bad
        if response.status == 403:
            assert (await response.json())["error"] == "forbidden"
        else:  # the router refused a path it normalised away: nothing answered for it either
            assert b"root:" not in await response.read()
    assert (await client.get(tampered[0])).status == 403 and (await client.get(tampered[-1])).status == 403
    # Even a validly signed crafted path reaches only files of this artifact's index (404), or is normalised by the
    # HTTP client into another path, whose signature then fails (403).
    for crafted in ("../../queue.db", "dist", "/etc/passwd", "dist/app.bin/..", "dist/./app.bin"):
        response = await client.get(signer.link(file_path(artifact_id, crafted), int(time.time()) + 60))
        assert response.status in (403, 404), crafted
        assert b"root:" not in await response.read()
    queue_db = await client.get(signer.link(file_path(artifact_id, "../../queue.db"), int(time.time()) + 60))
    assert queue_db.status in (403, 404) and not (await queue_db.read()).startswith(b"SQLite")
    assert (await client.get(url)).status == 200  # the real link still works


async def test_listing_needs_read_access_and_a_link_does_not(settings: Settings, tmp_path: Path) -> None:
    protected = with_server(settings, protect_reads=True)
    repo, _ = repo_maker(tmp_path, shared=False)({".forgeci.toml": PIPELINE})
    engine = FakeEngine()
    engine.on("build", Script(files=FILES))
    async with api_client(protected, {"FORGECI_API_TOKEN": TOKEN}, workers=True, engine=engine) as client:
        rt = runtime_of(client)
        submitted = await rt.control.submit_pipeline(JobSpec(repo=str(repo), ref="main"))
        jobs = by_display(await finished(rt, submitted.pipeline_id))
        assert (await client.get(f"/artifacts?job={jobs['build'].id}")).status == 401
        listing = await (await client.get(f"/artifacts?job={jobs['build'].id}",
                                          headers={"Authorization": f"Bearer {TOKEN}"})).json()
        url = urlsplit(listing["artifacts"][0]["links"]["archive"])
        assert (await client.get(f"{url.path}?{url.query}")).status == 200  # no token: the link is the permission


async def test_the_link_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    key = load_key(tmp_path)
    path = tmp_path / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(key) == 32
    assert load_key(tmp_path) == key  # the next start signs with the same key: links survive a restart
    path.chmod(0o644)
    assert load_key(tmp_path) == key and stat.S_IMODE(path.stat().st_mode) == 0o600
    other = LinkSigner(os.urandom(32))
    assert other.signature("/p", 1) != LinkSigner(key).signature("/p", 1)


def test_byte_ranges() -> None:
    assert byte_range(None, 100) is None and byte_range("bytes=0-9", None) is None
    assert byte_range("bytes=0-9", 100) == (0, 9) and byte_range("bytes=90-", 100) == (90, 99)
    assert byte_range("bytes=-5", 100) == (95, 99) and byte_range("bytes=50-500", 100) == (50, 99)
    assert byte_range("items=0-1", 100) is None and byte_range("bytes=0-1,3-4", 100) is None


async def test_the_dashboard_job_page_lists_the_files_with_links(built: Built) -> None:
    page = await (await built.client.get(f"/dashboard/jobs/{built.build}")).text()
    assert 'id="artifacts"' in page and "dist/app.bin" in page and "2.9 MiB" in page
    assert f'href="/artifacts/dl/{built.artifact["id"]}/archive.tar.zst?expires=' in page
    summary = await (await built.client.get(f"/dashboard/jobs/{built.build}/summary")).text()
    assert "coverage.xml" in summary
    assert 'id="artifacts"' not in await (await built.client.get(f"/dashboard/jobs/{built.lint}")).text()


async def test_a_store_that_lost_the_archive_answers_404_not_a_broken_download(built: Built) -> None:
    rt = runtime_of(built.client)
    for obj in list(rt.store.list("artifacts/")):
        rt.store.delete(obj.key)
    response = await built.client.get(built.path(built.file("dist/app.bin")["url"]))
    assert response.status == 404 and (await response.json())["detail"] == "the artifact's archive is gone from the store"
    assert runtime_of(built.client).queue.get(built.build).state is JobState.success


async def test_a_store_failing_mid_download_cuts_it_short(built: Built) -> None:
    rt = runtime_of(built.client)
    original = rt.store.get_stream

    class Failing:
        def __init__(self, inner: Any) -> None:
            self.inner, self.sent = inner, 0

        def read(self, size: int = -1) -> bytes:
            if self.sent > 1 << 20:
                raise StoreError("the store went away")
            data = self.inner.read(min(size, 1 << 18) if size and size > 0 else 1 << 18)
            self.sent += len(data)
            return data

    @contextmanager
    def failing(key: str) -> Iterator[Failing]:
        with original(key) as stream:
            yield Failing(stream)

    rt.store.get_stream = failing  # type: ignore[method-assign]
    response = await built.client.get(built.path(built.artifact["links"]["archive"]))
    assert response.status == 200
    with pytest.raises(Exception):  # noqa: B017 - aiohttp's payload error: the body ended before its length
        await response.read()


async def test_a_zip_link_streams_every_file_of_the_artifact(built: Built) -> None:
    link = built.artifact["links"]["zip"]
    assert urlsplit(link).path == f"/artifacts/dl/{built.artifact['id']}/archive.zip"
    response = await built.client.get(built.path(link))
    assert response.status == 200 and response.headers["Content-Type"] == "application/zip"
    assert "Content-Length" not in response.headers and response.headers.get("Transfer-Encoding") == "chunked"
    assert response.headers["Content-Disposition"].startswith(f'attachment; filename="build-{built.build}-artifacts.zip"')
    with zipfile.ZipFile(io.BytesIO(await response.read())) as archive:
        assert archive.testzip() is None  # every entry's CRC checks out
        assert {name: archive.read(name) for name in archive.namelist()} == {
            rel: data if isinstance(data, bytes) else data.encode() for rel, data in FILES.items()}
        assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in archive.infolist())
        assert {info.filename for info in archive.infolist()} == {f["path"] for f in built.artifact["files"]}
    # Signed for the zip only: the same expiry and signature name nothing else, and a changed path is refused.
    path, query = built.path(link).split("?")
    assert (await built.client.get(f"{path[:-3]}tar?{query}")).status == 403
    assert (await built.client.get(f"/artifacts/dl/{built.artifact['id']}/archive.zip")).status == 403
    page = await (await built.client.get(f"/dashboard/jobs/{built.build}")).text()
    assert f'href="/artifacts/dl/{built.artifact["id"]}/archive.zip?expires=' in page


async def test_the_zip_is_made_while_the_archive_streams(built: Built) -> None:
    """The first piece of the zip is out before the archive has been read to its end; the pieces stay small."""
    rt = runtime_of(built.client)
    record = rt.queue.artifact(built.artifact["id"], files=False)
    assert record is not None and record.size > 2 * CHUNK  # BLOB is incompressible: the archive is ~3 MB
    original, read = rt.store.get_stream, [0]

    class Counting:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def read(self, size: int = -1) -> bytes:
            data = self.inner.read(size)
            read[0] += len(data)
            return data

    @contextmanager
    def counting(key: str) -> Iterator[Counting]:
        with original(key) as stream:
            yield Counting(stream)

    rt.store.get_stream = counting  # type: ignore[method-assign]
    chunks = zip_chunks(rt.store, record)
    first = next(chunks)
    assert read[0] < record.size and first.startswith(b"PK\x03\x04")
    pieces = [first, *chunks]
    assert len(pieces) >= 3 and max(len(p) for p in pieces) <= 2 * CHUNK and read[0] == record.size
    with zipfile.ZipFile(io.BytesIO(b"".join(pieces))) as archive:
        assert archive.read("dist/app.bin") == BLOB


async def test_the_link_lifetime_is_a_setting(settings: Settings, tmp_path: Path) -> None:
    twelve_hours = with_server(settings, artifact_link_lifetime=12 * 3600.0)
    repo, _ = repo_maker(tmp_path, shared=False)({".forgeci.toml": PIPELINE})
    engine = FakeEngine()
    engine.on("build", Script(files=FILES))
    async with api_client(twelve_hours, workers=True, engine=engine) as client:
        rt = runtime_of(client)
        submitted = await rt.control.submit_pipeline(JobSpec(repo=str(repo), ref="main"))
        build = by_display(await finished(rt, submitted.pipeline_id))["build"].id
        before = time.time()
        listing = await (await client.get(f"/artifacts?job={build}")).json()
        assert before + 12 * 3600 - 5 <= listing["links_expire_at"] <= time.time() + 12 * 3600
        for url in (*listing["artifacts"][0]["links"].values(), listing["artifacts"][0]["files"][0]["url"]):
            assert parse_qs(urlsplit(url).query)["expires"] == [str(listing["links_expire_at"])]
        page = await (await client.get(f"/dashboard/jobs/{build}")).text()
        assert f"expires={listing['links_expire_at']}" in page or \
            f"expires={listing['links_expire_at'] + 1}" in page  # made a moment later
        # The link works for as long as it says: a signer a little under 12 hours on still accepts it.
        signer: LinkSigner = client.server.app[SIGNER]
        signer.clock = lambda: time.time() + 12 * 3600 - 60
        url = urlsplit(listing["artifacts"][0]["links"]["zip"])
        assert (await client.get(f"{url.path}?{url.query}")).status == 200
        signer.clock = lambda: time.time() + 12 * 3600 + 60
        assert (await client.get(f"{url.path}?{url.query}")).status == 403


@pytest.mark.parametrize(("text", "seconds"), [('"1h"', 3600.0), ('"90m"', 5400.0), ('"7d"', 7 * 86400.0),
                                               ("600", 600.0), ('"1d12h"', 129600.0)])
def test_link_lifetimes_that_are_accepted(text: str, seconds: float) -> None:
    assert parse_settings(f"[server]\nartifact_link_lifetime = {text}\n", "t.toml").server.artifact_link_lifetime \
        == seconds
    assert Settings.default().server.artifact_link_lifetime == 3600.0


@pytest.mark.parametrize("text", ['"30s"', '"8d"', "0", "-5", '"soon"', "true", '""'])
def test_link_lifetimes_that_are_refused(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(f"[server]\nartifact_link_lifetime = {text}\n", "t.toml")
    assert "server.artifact_link_lifetime: expected a duration" in str(caught.value)


def test_the_zip_keeps_regular_files_only_under_safe_names() -> None:
    """Directories, links and names that could leave the folder stay out; odd bytes and old times still zip."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        def add(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, mtime: float = 1.7e9,
                mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.size, info.mtime, info.mode = kind, len(data), mtime, mode
            if kind == tarfile.SYMTYPE:
                info.linkname, info.size = "../../etc/passwd", 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("dist", kind=tarfile.DIRTYPE)
        add("dist/run.sh", b"#!/bin/sh\n", mode=0o755)
        add("dist/old.txt", b"from 1970", mtime=0)
        add("dist/link", kind=tarfile.SYMTYPE)
        add("../escape.txt", b"no")
        add("/etc/absolute", b"no")
        add("dist/caf\udce9.txt", b"latin-1 name")
    store = _BytesStore(zstandard.ZstdCompressor().compress(raw.getvalue()))
    record: Any = type("Record", (), {"object": "artifacts/x.tar.zst", "job_id": 1})()
    data = b"".join(zip_chunks(store, record))  # type: ignore[arg-type]
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == ["dist/run.sh", "dist/old.txt", "dist/caf\ufffd.txt"]
        assert archive.read("dist/run.sh") == b"#!/bin/sh\n" and archive.read("dist/old.txt") == b"from 1970"
        assert archive.getinfo("dist/run.sh").external_attr >> 16 == stat.S_IFREG | 0o755
        assert archive.getinfo("dist/old.txt").date_time[0] == 1980
        assert archive.testzip() is None


class _BytesStore:
    def __init__(self, data: bytes) -> None:
        self.data = data

    @contextmanager
    def get_stream(self, key: str) -> Iterator[io.BytesIO]:
        yield io.BytesIO(self.data)


# The hostile zip link schemathesis sent (seed 1234): its id decodes to a newline among other characters.
HOSTILE_ZIP = ("/artifacts/dl/%7F%C3%99%F3%83%98%83.%F2%B0%A2%B3%0AD%F4%84%8A%86%F1%81%8C%AB%F0%B9%92%94%F1%A4%B9%8A%C2"
               "%B48%C3%B4%F0%AA%8B%89%F1%81%B7%A9%C2%94%F0%B5%B5%8B%F3%84%88%B2%C3%B4%F3%88%8E%AA/archive.zip"
               "?sig=X%C3%8C%C2%8D%C2%83%C2%B4%F2%87%9D%A4%C3%8A%22&expires=2")


async def test_a_path_with_a_newline_is_a_json_answer_directly_and_through_the_fault_proxy(built: Built) -> None:
    """tests/reliability/test_hostile_api.py fuzzes the server through FaultProxy: a path with %0A once missed the
    proxy's own `.*` route and came back as its text/plain 404, which schemathesis blamed on the API."""
    signer: LinkSigner = built.client.server.app[SIGNER]
    upstream = str(built.client.make_url("")).rstrip("/")
    proxy = FaultProxy(upstream)
    await proxy.start()
    try:
        async with aiohttp.ClientSession() as session:
            for base in (upstream, proxy.endpoint):
                async with session.get(URL(base + HOSTILE_ZIP, encoded=True)) as response:
                    assert response.status == 403 and response.content_type == "application/json", base
                    assert (await response.json())["error"] == "forbidden"
                # A validly signed file link whose path holds a newline reaches the handler (no such file), not a
                # router miss.
                link = signer.link(file_path(built.artifact["id"], "dist/line\nbreak.txt"), int(time.time()) + 60)
                async with session.get(URL(base + link, encoded=True)) as response:
                    assert response.status == 404 and response.content_type == "application/json", base
                    assert "has no file 'dist/line\\nbreak.txt'" in (await response.json())["detail"]
    finally:
        await proxy.close()
    assert [seen.status for seen in proxy.seen] == [403, 404]
