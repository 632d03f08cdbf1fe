"""`forgeci artifacts JOB [--download DIR [PATH...]]`: a job's artifacts listed, or fetched through their signed
links and checked against the sha256 the server's index holds."""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import httpx

from client.api import Client
from client.errors import BadResponse, ClientError, ServerUnreachable
from client.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from client.models import _float, _int, _object, _str

PARALLEL = 4  # files fetched at once
CHUNK = 1 << 20


@dataclass(frozen=True)
class ArtifactFileInfo:
    path: str
    size: int
    sha256: str
    url: str | None

    @classmethod
    def from_dict(cls, data: object) -> ArtifactFileInfo:
        d = _object(data, "an artifact file")
        url = d.get("url")
        return cls(_str(d.get("path")), _int(d.get("size")), _str(d.get("sha256")), url if isinstance(url, str) else None)


@dataclass(frozen=True)
class ArtifactInfo:
    """A job's artifact as `GET /artifacts` lists it."""

    id: int
    job_id: int
    display: str
    state: str  # kept | empty | not kept
    error: str | None
    size: int
    total_size: int
    expires_at: float | None
    links: Mapping[str, str]
    files: tuple[ArtifactFileInfo, ...]

    @classmethod
    def from_dict(cls, data: object) -> ArtifactInfo:
        d = _object(data, "an artifact")
        links = d.get("links") if isinstance(d.get("links"), Mapping) else {}
        files = d.get("files") if isinstance(d.get("files"), list) else []
        error = d.get("error")
        return cls(_int(d.get("id")), _int(d.get("job_id")), _str(d.get("display")), _str(d.get("state")),
                   error if isinstance(error, str) else None, _int(d.get("size")), _int(d.get("total_size")),
                   _float(d.get("expires_at")), {k: v for k, v in links.items() if isinstance(v, str)},  # type: ignore[union-attr]
                   tuple(ArtifactFileInfo.from_dict(f) for f in files))  # type: ignore[union-attr]


async def list_artifacts(client: Client, job_id: int) -> list[ArtifactInfo]:
    answer = await client.request("GET", "/artifacts", params={"job": str(job_id)})
    if not isinstance(answer, dict) or not isinstance(answer.get("artifacts"), list):
        raise BadResponse("unexpected answer from the server: no artifacts list")
    try:
        return [ArtifactInfo.from_dict(item) for item in answer["artifacts"]]
    except BadResponse as exc:
        raise BadResponse(f"unexpected answer from the server: {exc}") from None


def _size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def describe(job_id: int, artifacts: Sequence[ArtifactInfo], out: TextIO) -> None:
    """The listing `forgeci artifacts JOB` prints."""
    if not artifacts:
        print(f"job {job_id} has no artifacts", file=out)
    for artifact in artifacts:
        if artifact.state != "kept":
            why = artifact.error if artifact.state == "not kept" else "its paths matched no file"
            print(f"job {artifact.job_id} ({artifact.display}): no artifacts kept: {why}", file=out)
            continue
        until = time.strftime("%Y-%m-%d %H:%M", time.localtime(artifact.expires_at)) if artifact.expires_at else "?"
        print(f"job {artifact.job_id} ({artifact.display}): {len(artifact.files)} files, {_size(artifact.total_size)}"
              f" ({_size(artifact.size)} compressed), kept until {until}", file=out)
        width = max((len(f.path) for f in artifact.files), default=0)
        for f in artifact.files:
            print(f"  {f.path:<{width}}  {_size(f.size):>9}  {f.sha256[:16]}", file=out)
        if "archive" in artifact.links:
            print(f"  all of it: {artifact.links['archive']}", file=out)
        if "zip" in artifact.links:
            print(f"  as a zip:  {artifact.links['zip']}", file=out)


def selected(files: Sequence[ArtifactFileInfo], paths: Sequence[str]) -> tuple[list[ArtifactFileInfo], list[str]]:
    """The files PATH arguments name (exact paths, folders, or globs); the arguments that name none."""
    if not paths:
        return list(files), []
    chosen: dict[str, ArtifactFileInfo] = {}
    unknown = []
    for path in paths:
        wanted = path.strip("/")
        hits = [f for f in files if f.path == wanted or f.path.startswith(wanted + "/")
                or fnmatch.fnmatchcase(f.path, wanted)]
        if not hits:
            unknown.append(path)
        chosen.update((f.path, f) for f in hits)
    return sorted(chosen.values(), key=lambda f: f.path), unknown


def target_of(root: Path, rel: str) -> Path:
    """Where a file of the artifact goes below `root`: never outside it, whatever the server says."""
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\0" in rel or "\\" in rel:
        raise BadResponse(f"the server listed a file outside the artifact: {rel!r}")
    return root.joinpath(*parts)


def _rebased(server: str, url: str) -> str:
    """A link's path and query on the server the command talks to (the link names the server's public URL)."""
    parts = urlsplit(url)
    return f"{server}{parts.path}?{parts.query}"


async def fetch(http: httpx.AsyncClient, url: str, file: ArtifactFileInfo, target: Path) -> None:
    """Download one file to `target` (via a temporary file beside it) and check its size and sha256."""
    digest, size = hashlib.sha256(), 0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(prefix=".forgeci-", dir=target.parent)
    except OSError as exc:
        raise ClientError(f"{file.path}: cannot write below {target.parent}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            async with http.stream("GET", url) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise ClientError(f"{file.path}: the download answered {response.status_code} "
                                      f"({_error_of(response)})", response.status_code)
                async for chunk in response.aiter_bytes(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    handle.write(chunk)
        if size != file.size or digest.hexdigest() != file.sha256:
            raise ClientError(f"{file.path}: got {size} bytes with sha256 {digest.hexdigest()[:16]}..., expected "
                              f"{file.size} bytes with {file.sha256[:16]}...")
        os.replace(partial, target)
    except httpx.HTTPError as exc:
        raise ServerUnreachable(f"{file.path}: the download failed: {exc or type(exc).__name__}") from None
    except OSError as exc:
        raise ClientError(f"{file.path}: cannot write {target}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _error_of(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
        return str(body.get("detail") or body.get("error"))
    except (ValueError, AttributeError):
        return response.reason_phrase


async def download(client: Client, artifacts: Sequence[ArtifactInfo], root: Path, paths: Sequence[str],
                   out: TextIO) -> int:
    """Fetch the chosen files of every kept artifact below `root`, PARALLEL at a time, each checked."""
    files = [(a, f) for a in artifacts if a.state == "kept" for f in a.files]
    chosen, unknown = selected([f for _, f in files], paths)
    for path in unknown:
        print(f"forgeci: no file {path!r} in the artifacts of this job", file=sys.stderr)
    if unknown:
        return EXIT_USAGE
    if not chosen:
        print("forgeci: nothing to download", file=sys.stderr)
        return EXIT_FAILED
    started = time.monotonic()
    gate = asyncio.Semaphore(PARALLEL)
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=120.0), follow_redirects=False) as http:
        async def one(file: ArtifactFileInfo) -> None:
            async with gate:
                if file.url is None:
                    raise ClientError(f"{file.path}: the server gave no link")
                await fetch(http, _rebased(client.server, file.url), file, target_of(root, file.path))

        results = await asyncio.gather(*(one(f) for f in chosen), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    for problem in failed:
        if not isinstance(problem, ClientError):
            raise problem
        print(f"forgeci: {problem}", file=sys.stderr)
    if failed:
        print(f"forgeci: {len(failed)} of {len(chosen)} files failed; the others are in {root}", file=sys.stderr)
        return EXIT_FAILED
    total = sum(f.size for f in chosen)
    print(f"downloaded {len(chosen)} file{'s' if len(chosen) != 1 else ''} ({_size(total)}) into {root} in "
          f"{time.monotonic() - started:.1f}s; sha256 verified", file=out)
    return EXIT_OK


async def artifacts(client: Client, job_id: int, download_to: str | None, paths: Sequence[str],
                    out: TextIO | None = None) -> int:
    """List a job's artifacts, or (with `download_to`) fetch them; the CLI's `artifacts` command."""
    out = out or sys.stdout
    found = await list_artifacts(client, job_id)
    if download_to is None:
        if paths:
            print("forgeci: PATH arguments need --download DIR", file=sys.stderr)
            return EXIT_USAGE
        describe(job_id, found, out)
        return EXIT_OK
    return await download(client, found, Path(download_to), paths, out)
