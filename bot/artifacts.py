"""Artifacts over HTTP: `GET /artifacts` lists them with signed links; the links stream an archive, its tar, a zip or
one file from the store (ranges too), checked by forgeci's own signature, never by the store's."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

from aiohttp import web

from bot.artifact_links import LinkSigner, archive_path, file_path, load_key, zip_path
from bot.auth import Access, Handler, guard
from bot.errors import HTTPError
from bot.keys import AUTH, RUNTIME, SETTINGS
from config.errors import ConfigError, ConfigIssue
from runner.artifacts.read import Chunks, archive_chunks, member_chunks, tar_chunks
from runner.artifacts.zipped import zip_chunks
from runner.errors import ArchiveError, JobNotFound, ObjectMissing, PipelineNotFound, RunnerError
from runner.queue import ArtifactRecord
from runner.runtime import Runtime

log = logging.getLogger(__name__)

SIGNER = web.AppKey("artifact_links", LinkSigner)
MAX_ID = 2**63 - 1
_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


# -- listing ----------------------------------------------------------------------------------------------------


def artifact_json(record: ArtifactRecord, signer: LinkSigner, base: str, expires: int) -> dict[str, Any]:
    """An artifact as the API lists it: the index row, and a signed link to it whole and to each file."""
    out = record.to_dict()
    out.pop("object")  # the store's own key: of no use outside, and nothing a client should rely on
    kept = record.object is not None
    out["links"] = {"archive": base + signer.link(archive_path(record.id), expires),
                    "tar": base + signer.link(archive_path(record.id, tar=True), expires),
                    "zip": base + signer.link(zip_path(record.id), expires)} if kept else {}
    out["files"] = [{**f.to_dict(), "url": base + signer.link(file_path(record.id, f.path), expires) if kept else None}
                    for f in record.files]
    return out


def _query_id(request: web.Request, key: str) -> int:
    text = request.query[key]
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_ID:
        raise ConfigError(ConfigIssue("request", key, f"expected an id (a positive integer), got {text!r}"))
    return int(text)


def _records(runtime: Runtime, job_id: int | None, pipeline_id: int | None) -> list[ArtifactRecord]:
    """The artifacts of a job or a pipeline; 404 when there is no such job or pipeline and nothing it kept."""
    queue = runtime.queue
    records = queue.artifacts_of(job_id=job_id, pipeline_id=pipeline_id)
    if not records:
        try:
            queue.state_of(job_id) if job_id is not None else queue.pipeline(pipeline_id)  # type: ignore[arg-type]
        except (JobNotFound, PipelineNotFound) as exc:
            raise HTTPError(404, "not found", str(exc)) from None
    return records


async def list_artifacts(request: web.Request) -> web.Response:
    """GET /artifacts?job=ID | ?pipeline=ID -> {artifacts, links_expire_at}: every file with its size, sha256
    and a signed link (which needs no token: anyone holding it may download, until it expires)."""
    keys = set(request.query)
    if keys - {"job", "pipeline"} or len(keys) != 1:
        raise ConfigError(ConfigIssue("request", "job", "expected exactly one of ?job=ID and ?pipeline=ID"))
    key = keys.pop()
    found = _query_id(request, key)
    records = await asyncio.to_thread(_records, request.app[RUNTIME], found if key == "job" else None,
                                      found if key == "pipeline" else None)
    expires = _expiry(request)
    base = request.app[SETTINGS].server.public_url.rstrip("/")
    signer = request.app[SIGNER]
    return web.json_response({"artifacts": [artifact_json(r, signer, base, expires) for r in records],
                              "links_expire_at": expires})


async def job_artifacts(request: web.Request, job_id: int) -> dict[str, Any] | None:
    """A job's artifact for the dashboard's job page (links relative to this server), or None."""
    records = await asyncio.to_thread(request.app[RUNTIME].queue.artifacts_of, job_id=job_id)
    if not records:
        return None
    return artifact_json(records[0], request.app[SIGNER], "", _expiry(request))


def _expiry(request: web.Request) -> int:
    """When links made now stop working: `server.artifact_link_lifetime` from now."""
    return int(time.time() + request.app[SETTINGS].server.artifact_link_lifetime)


# -- downloads --------------------------------------------------------------------------------------------------


def byte_range(header: str | None, total: int | None) -> tuple[int, int] | None:
    """(first, last) byte of a single `Range: bytes=...` the resource can serve; None for the whole of it (no
    header, several ranges, or an unknown size); a 416 when it lies outside."""
    if not header or total is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or not (match[1] or match[2]):
        return None  # several ranges, or another unit: the whole resource is a valid answer
    if match[1]:
        first, last = int(match[1]), min(int(match[2]) if match[2] else total - 1, total - 1)
    else:
        first, last = max(0, total - int(match[2])), total - 1
    if first > last or first >= total:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{total}"})
    return first, last


def _disposition(name: str) -> str:
    plain = re.sub(r'[^A-Za-z0-9._ ()+-]', "_", name) or "download"
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"


async def _pull(chunks: Chunks) -> bytes | None:
    return await asyncio.to_thread(next, chunks, None)


async def _stream(request: web.Request, chunks: Chunks, total: int | None, name: str,
                  content_type: str) -> web.StreamResponse:
    """Send `chunks` (read in threads): the first one is read before the answer starts, so that a store that is
    down or an archive that is gone is a JSON error, not a cut-off download."""
    try:
        span = byte_range(request.headers.get("Range"), total)
        try:
            first = await _pull(chunks)
        except ObjectMissing:
            raise HTTPError(404, "not found", "the artifact's archive is gone from the store") from None
        except ArchiveError as exc:
            raise HTTPError(500, "damaged artifact", str(exc)) from None
        response = web.StreamResponse(status=206 if span else 200)
        response.content_type = content_type
        response.headers.update({"Content-Disposition": _disposition(name), "X-Content-Type-Options": "nosniff",
                                 "Content-Security-Policy": "sandbox", "Cache-Control": "private, no-cache"})
        if total is not None:
            response.headers["Accept-Ranges"] = "bytes"
            start, end = span or (0, total - 1)
            response.content_length = end - start + 1
            if span:
                response.headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        await response.prepare(request)
        if request.method != "HEAD":
            try:
                await _send(response, first, chunks, span)
            except RunnerError as exc:  # after the headers there is no JSON left to send: cut the download short
                log.warning("download %s cut short: %s", request.path, exc)
                if request.transport is not None:
                    request.transport.abort()  # a client sees a short body, never a complete-looking one
                return response
            await response.write_eof()
        return response
    finally:
        await asyncio.to_thread(chunks.close)  # its store stream closes with it


async def _send(response: web.StreamResponse, first: bytes | None, chunks: Chunks,
                span: tuple[int, int] | None) -> None:
    skip, left = (span[0], span[1] - span[0] + 1) if span else (0, None)
    data = first
    while data is not None:
        if skip:
            cut = min(skip, len(data))
            data, skip = data[cut:], skip - cut
        if left is not None:
            data = data[:left]
            left -= len(data)
        if data:
            await response.write(data)
        if left == 0:
            return
        data = await _pull(chunks)


def _record(request: web.Request) -> ArtifactRecord:
    """The artifact a signed link names: the signature over the exact path and expiry first, then the index."""
    request.app[SIGNER].check(request.path, request.query.get("expires"), request.query.get("sig"))
    text = request.match_info["id"]
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_ID:
        raise HTTPError(404, "not found", "no such artifact")
    record = request.app[RUNTIME].queue.artifact(int(text), files=False)
    if record is None or record.object is None:
        raise HTTPError(404, "not found", f"artifact {text} is gone (expired, or replaced by a later attempt)")
    return record


def _archive_name(record: ArtifactRecord, suffix: str) -> str:
    return f"{record.display}-{record.job_id}-artifacts{suffix}"


async def download_archive(request: web.Request) -> web.StreamResponse:
    """GET /artifacts/dl/{id}/archive.tar.zst?expires=&sig=: the artifact's archive as it is stored."""
    record = await asyncio.to_thread(_record, request)
    store = request.app[RUNTIME].store
    return await _stream(request, archive_chunks(store, record), record.size, _archive_name(record, ".tar.zst"),
                         "application/zstd")


async def download_tar(request: web.Request) -> web.StreamResponse:
    """GET /artifacts/dl/{id}/archive.tar?expires=&sig=: the archive decompressed on the way (a plain tar)."""
    record = await asyncio.to_thread(_record, request)
    store = request.app[RUNTIME].store
    return await _stream(request, tar_chunks(store, record), record.raw_size, _archive_name(record, ".tar"),
                         "application/x-tar")


async def download_zip(request: web.Request) -> web.StreamResponse:
    """GET /artifacts/dl/{id}/archive.zip?expires=&sig=: the artifact's files as a zip, deflated on the way."""
    record = await asyncio.to_thread(_record, request)
    store = request.app[RUNTIME].store
    return await _stream(request, zip_chunks(store, record), None, _archive_name(record, ".zip"), "application/zip")


async def download_file(request: web.Request) -> web.StreamResponse:
    """GET /artifacts/dl/{id}/files/{path}?expires=&sig=: one file of the artifact, as the index lists it."""
    record = await asyncio.to_thread(_record, request)
    runtime = request.app[RUNTIME]
    path = request.match_info["path"]
    found = await asyncio.to_thread(runtime.queue.artifact_file, record.id, path)
    if found is None:
        raise HTTPError(404, "not found", f"artifact {record.id} has no file {path!r}")
    return await _stream(request, member_chunks(runtime.store, record, found.path), found.size,
                         found.path.rsplit("/", 1)[-1], "application/octet-stream")


# -- setup ------------------------------------------------------------------------------------------------------

ROUTES: tuple[tuple[str, str, Handler, Access], ...] = (
    ("GET", "/artifacts", list_artifacts, "read"),
    # A link carries its own permission (its signature): no token, even with server.protect_reads.
    ("GET", "/artifacts/dl/{id}/archive.tar.zst", download_archive, "public"),
    ("GET", "/artifacts/dl/{id}/archive.tar", download_tar, "public"),
    ("GET", "/artifacts/dl/{id}/archive.zip", download_zip, "public"),
    # [\s\S], not `.`: a file whose name holds a newline has a link that reaches it too.
    ("GET", r"/artifacts/dl/{id}/files/{path:[\s\S]+}", download_file, "public"),
)


def setup_artifacts(app: web.Application, clock: Callable[[], float] = time.time) -> None:
    """Register the artifact routes (after setup_api: they share its AUTH) and the link key's loading."""

    async def links_ctx(app: web.Application) -> AsyncIterator[None]:
        # After the runtime's context, which made the data dir.
        app[SIGNER] = LinkSigner(await asyncio.to_thread(load_key, app[SETTINGS].data_dir), clock)
        yield

    app.cleanup_ctx.append(links_ctx)
    auth = app[AUTH]
    for method, path, handler, access in ROUTES:
        if access == "public":  # downloads answer HEAD too (its headers, no body)
            app.router.add_get(path, guard(auth, access, handler))
        else:
            app.router.add_route(method, path, guard(auth, access, handler))
