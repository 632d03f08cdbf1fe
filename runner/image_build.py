"""Job images built from a repository's Containerfile: tagged by content hash, built once, shared via the store.

The tag is `localhost/forgeci-built:HASH` (HASH of the Containerfile, the build context and the FROM images' ids),
so the next job with the same inputs uses the image without building, and a change rebuilds from Podman's layer
cache. Built images are saved (`podman save` + zstd) to the store under `images/HASH.tar.zst`, and other hosts load
them instead of building. A fork's pull request may use those, but builds into a tag of its own scope and exports
nothing. Every image built here carries the `io.forgeci.built` label; maintenance removes only those.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import zstandard

from config.durations import format_duration
from config.images import ImageBuild
from config.settings import RunnerSettings
from runner.errors import ObjectMissing, RunnerError, StoreError
from runner.image_context import (
    BuildInput,
    ContextError,
    build_hash,
    from_images,
    stage_context,
)
from runner.logs import JobLog
from runner.models import JobSpec, JobState, Outcome, SnapshotRecord
from runner.podman_cli import podman_cli
from runner.podman_user import PodmanUser
from runner.store import ObjectStore

log = logging.getLogger(__name__)

BUILT_LABEL = "io.forgeci.built"
HASH_LABEL = "io.forgeci.hash"
SCOPE_LABEL = "io.forgeci.scope"
REPOSITORY = "localhost/forgeci-built"  # trusted builds; forks get `localhost/forgeci-fork-<scope>`
STORE_PREFIX = "images/"
CHUNK = 1 << 20
DAY = 86400.0
CLI_TIMEOUT = 120.0
REFERENCE = re.compile(r"(?:[a-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9._/-]+(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
                       r"(?:@sha256:[0-9a-f]{64})?")
BUILD_STEP = "image build"  # the log's step name of the build output (the dashboard heads it so)


class BuildFailed(Exception):
    """The image could not be made for a reason of the pipeline's own (or a cancel/timeout): no infra retry."""

    def __init__(self, message: str, state: JobState = JobState.failure) -> None:
        super().__init__(message)
        self.state = state


@dataclass(frozen=True)
class BuildLog:
    """Where the build reports: forgeci's own lines, and the output of `podman build` as it comes."""

    say: Callable[[str], None]
    output: Callable[[bytes], None]
    flush: Callable[[], None] = lambda: None  # the output's unfinished line, before forgeci's next line


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children first found, then theirs), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as handle:
                    ppid = int(handle.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def store_key(digest: str) -> str:
    return f"{STORE_PREFIX}{digest}.tar.zst"


def fork_scope(spec: JobSpec) -> str:
    """'' for a trusted job; for a fork's job, a short name of its repository and pull request."""
    if not spec.fork:
        return ""
    return hashlib.sha256(f"{spec.repo}\0{spec.pr_number}\0{spec.ref}".encode()).hexdigest()[:12]


class ImageBuilder:
    """Builds, finds, exports, imports and prunes repository images in one Podman user's storage.

    `storage` are extra global Podman options (`--root DIR --runroot DIR`: a second storage, as in the tests).
    `state_dir` keeps one file per image this instance used; its mtime is the image's last use.
    """

    def __init__(self, user: PodmanUser, state_dir: Path, store: ObjectStore | None = None, *,
                 storage: Sequence[str] = (), network: str = "slirp4netns", ca_bundle: str = "",
                 timeout: float = 3600.0, lookup: Callable[[str], Awaitable[str]] | None = None) -> None:
        self.user = user
        self.state_dir = state_dir
        self.store = store
        self.storage = tuple(storage)
        self.network = network
        self.ca_bundle = ca_bundle
        self.timeout = timeout
        self.lookup = lookup  # the engine's image id look-up (its API is faster than the command line)
        self._locks: dict[str, asyncio.Lock] = {}
        self._building = 0  # builds running now: a stopped one removes what it left only when it was alone

    @classmethod
    def for_settings(cls, runner: RunnerSettings, user: PodmanUser, data_dir: Path,
                     store: ObjectStore | None = None,
                     lookup: Callable[[str], Awaitable[str]] | None = None) -> ImageBuilder:
        """The builder of a data dir: its use records in `<data_dir>/images`, builds on the jobs' network."""
        return cls(user, data_dir / "images", store, network=runner.network, ca_bundle=runner.ca_bundle,
                   timeout=runner.job_timeout, lookup=lookup)

    # -- Podman ---------------------------------------------------------------------------------------------

    def podman(self, *args: str) -> list[str]:
        return ["podman", *self.storage, *args]

    def cli(self, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[bytes]:
        try:
            return podman_cli(self.user, [*self.storage, *args], check=False, timeout=timeout)
        except (OSError, subprocess.SubprocessError) as exc:
            raise RunnerError(f"podman {args[0]}: {exc}") from exc

    def image_id(self, image: str) -> str:
        """The image's id, '' when this storage has no such image."""
        result = self.cli("image", "inspect", "--format", "{{.Id}}", image)
        return result.stdout.decode().strip() if result.returncode == 0 else ""

    async def _id(self, image: str) -> str:
        return await self.lookup(image) if self.lookup is not None else await asyncio.to_thread(self.image_id, image)

    def label(self, image: str, label: str) -> str:
        result = self.cli("image", "inspect", "--format", f'{{{{index .Labels "{label}"}}}}', image)
        text = result.stdout.decode().strip() if result.returncode == 0 else ""
        return "" if text == "<no value>" else text

    def _popen(self, args: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        self.user.ensure_runtime_dir()
        return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
            self.user.command(self.podman(*args)), cwd=self.user.home if os.path.isdir(self.user.home) else "/",
            env=None if self.user.switch else {**os.environ, **self.user.env()}, **kwargs)

    # -- the job's image ------------------------------------------------------------------------------------

    async def resolve(self, build: ImageBuild, workspace: Path, spec: JobSpec, out: BuildLog,
                      cancel: asyncio.Event) -> str:
        """The tag of the job's image: found, imported from the store, or built now. BuildFailed for the
        pipeline's faults; RunnerError when Podman itself fails."""
        try:
            source = await asyncio.to_thread(BuildInput.resolve, build, workspace)
        except ContextError as exc:
            raise BuildFailed(str(exc)) from None
        bases = from_images(source.text)
        if bad := [base for base in bases if not REFERENCE.fullmatch(base)]:
            raise BuildFailed(f"image build: FROM {bad[0]!r} is not an image name")
        ids = await asyncio.gather(*(self._id(base) for base in bases))
        if missing := [base for base, found in zip(bases, ids, strict=True) if not found]:
            raise BuildFailed(f"image build: FROM image {missing[0]} does not exist on this runner (build or load "
                              f"it first; there is no registry to pull from)")
        try:
            digest = await asyncio.to_thread(build_hash, source, list(ids))
        except OSError as exc:  # an unreadable file the repository put in the context
            raise BuildFailed(f"image build: cannot read the build context: {exc}") from None
        trusted = f"{REPOSITORY}:{digest}"
        scope = fork_scope(spec)
        own = f"localhost/forgeci-fork-{scope}:{digest}" if scope else trusted
        lock = self._locks.setdefault(own, asyncio.Lock())
        async with lock:  # two jobs of one image on this host: the second uses what the first built
            for tag in dict.fromkeys((trusted, own)):
                if await self._id(tag):
                    self.touch(tag, digest)
                    out.say(f"image: {tag} is already built ({build.containerfile}); no build")
                    return tag
            if self.store is not None and await asyncio.to_thread(self.import_image, digest, out.say):
                self.touch(trusted, digest)
                return trusted
            await self.build(source, own, digest, scope, workspace, out, cancel)
            self.touch(own, digest)
        if own == trusted and self.store is not None:
            await asyncio.to_thread(self.export_image, own, digest, out.say)
        return own

    async def build(self, source: BuildInput, tag: str, digest: str, scope: str, workspace: Path, out: BuildLog,
                    cancel: asyncio.Event) -> None:
        """`podman build` of exactly the hashed context, its output streamed to `out`, with its time."""
        staged = workspace.parent / f".{workspace.name}.image-context"
        shutil.rmtree(staged, ignore_errors=True)
        rel = source.containerfile.relative_to(workspace.resolve())
        out.say(f"image: building {tag} from {rel} (context {source.context.relative_to(workspace.resolve())})")
        started = time.monotonic()
        before = await asyncio.to_thread(self.working_containers)
        self._building += 1
        try:
            try:
                await asyncio.to_thread(stage_context, source, staged)
            except OSError as exc:
                raise RunnerError(f"cannot stage the build context in {staged}: {exc}") from exc
            args = ["build", "--layers", "-f", str(source.containerfile), "--network", self.network,
                    "--label", f"{BUILT_LABEL}=1", "--label", f"{HASH_LABEL}={digest}",
                    "--label", f"{SCOPE_LABEL}={scope or 'trusted'}", "-t", tag]
            if self.ca_bundle and os.path.isfile(self.ca_bundle):
                args += ["-v", f"{self.ca_bundle}:/etc/ssl/host-ca.crt:ro"]
            code = await self._stream(args + [str(staged)], out, cancel)
            if code is None and self._building == 1:  # Podman leaves a stopped build's container in its storage
                await asyncio.to_thread(self.remove_containers, set(self.working_containers()) - set(before))
        finally:
            self._building -= 1
            shutil.rmtree(staged, ignore_errors=True)
        took = format_duration(time.monotonic() - started)
        out.flush()
        if code == 0:
            out.say(f"image: built {tag} in {took}")
            return
        if cancel.is_set():
            raise BuildFailed("cancelled during the image build", JobState.cancelled)
        if code is None:
            raise BuildFailed(f"image build exceeded the job's time limit ({format_duration(self.timeout)})",
                              JobState.timeout)
        out.say(f"image: build failed after {took} (exit {code})")
        raise BuildFailed(f"image build failed (exit {code}): see the build output in the log")

    async def _stream(self, args: list[str], out: BuildLog, cancel: asyncio.Event) -> int | None:
        """Run podman with output to `out`; None when it was stopped (a cancel, the time limit)."""
        self.user.ensure_runtime_dir()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.user.command(self.podman(*args)), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True,
                cwd=self.user.home if os.path.isdir(self.user.home) else "/",
                env=None if self.user.switch else {**os.environ, **self.user.env()})
        except OSError as exc:
            raise RunnerError(f"cannot run podman build: {exc}") from exc
        assert proc.stdout is not None
        stdout = proc.stdout

        async def pump() -> int:
            while chunk := await stdout.read(65536):
                out.output(chunk)
            return await proc.wait()

        reading = asyncio.ensure_future(pump())
        stopping = asyncio.ensure_future(cancel.wait())
        try:
            done, _ = await asyncio.wait({reading, stopping}, timeout=self.timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if reading in done:
            return reading.result()
        # A RUN line's processes are Podman's descendants in namespaces of their own, and outlive a signalled
        # `podman build` (PID 1 of a build container ignores SIGTERM): kill the whole tree while it is still one.
        for pid in [proc.pid, *descendants(proc.pid)]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        await reading
        return None

    def working_containers(self) -> dict[str, float]:
        """Podman's build containers in this storage (`podman ps --external`): id -> creation time."""
        result = self.cli("ps", "-a", "--external", "--no-trunc", "--format", "json")
        try:
            found = json.loads(result.stdout or b"[]") if result.returncode == 0 else []
        except ValueError:
            return {}
        return {str(c.get("Id")): float(c.get("Created") or 0) for c in found or []
                if str(c.get("State")) == "storage" and any(str(n).endswith("-working-container")
                                                            for n in c.get("Names") or ())}

    def remove_containers(self, ids: set[str]) -> None:
        if ids:
            self.cli("rm", "-f", *sorted(ids))

    # -- the store ------------------------------------------------------------------------------------------

    def export_image(self, tag: str, digest: str, say: Callable[[str], None]) -> bool:
        """`podman save` + zstd into the store; a failure is a warning (other hosts then build it themselves)."""
        assert self.store is not None
        started = time.monotonic()
        key = store_key(digest)
        with tempfile.TemporaryFile() as errors:
            proc = self._popen(["save", tag], stdout=subprocess.PIPE, stderr=errors)
            assert proc.stdout is not None
            try:
                info = self.store.put_stream(key, zstandard.ZstdCompressor(level=3).stream_reader(proc.stdout))
            except StoreError as exc:
                proc.kill()
                proc.wait()
                say(f"warning: image: could not export {tag} to the store: {exc}")
                return False
            finally:
                proc.stdout.close()
            if proc.wait() != 0:
                errors.seek(0)
                with contextlib.suppress(StoreError):
                    self.store.delete(key)
                say(f"warning: image: podman save {tag} failed: {errors.read().decode(errors='replace').strip()}")
                return False
        say(f"image: exported {tag} to the store as {key} ({info.size / 1e6:.1f} MB) in "
            f"{format_duration(time.monotonic() - started)}")
        return True

    def import_image(self, digest: str, say: Callable[[str], None]) -> bool:
        """Load the image of `digest` from the store when another host exported it; False when it is not there or
        cannot be loaded (the caller builds it then)."""
        assert self.store is not None
        key = store_key(digest)
        try:
            self.store.stat(key)
        except ObjectMissing:
            return False
        except StoreError as exc:
            say(f"warning: image: the store does not answer ({exc}); building here")
            return False
        started = time.monotonic()
        with tempfile.TemporaryFile() as output:
            proc = self._popen(["load", "-q"], stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT)
            assert proc.stdin is not None
            try:
                with self.store.get_stream(key) as source:
                    reader = zstandard.ZstdDecompressor().stream_reader(source)
                    while block := reader.read(CHUNK):
                        proc.stdin.write(block)
            except (StoreError, zstandard.ZstdError, OSError) as exc:
                say(f"warning: image: could not import {key}: {exc}; building here")
                return False
            finally:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
                code = proc.wait()
            if code != 0:
                output.seek(0)
                say(f"warning: image: podman load of {key} failed: {output.read().decode(errors='replace').strip()}")
                return False
        if self.label(f"{REPOSITORY}:{digest}", HASH_LABEL) != digest:
            say(f"warning: image: {key} did not hold {REPOSITORY}:{digest}; building here")
            return False
        say(f"image: imported {REPOSITORY}:{digest} from the store in {format_duration(time.monotonic() - started)}; "
            f"no build")
        return True

    # -- use and retention ----------------------------------------------------------------------------------

    def _marker(self, tag: str) -> Path:
        return self.state_dir / tag.replace("/", "_").replace(":", "_")

    def touch(self, tag: str, digest: str) -> None:
        """Record that `tag` (of hash `digest`) was used now: retention counts from the last use."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._marker(tag).write_text(f"{tag}\n{digest}\n")

    def prune(self, now: float, days: int) -> tuple[int, list[str]]:
        """Remove images forgeci built that no job used for `days` (and their exports); only images with the
        built label that this instance used are ever touched. Returns (how many, errors)."""
        count, errors = 0, []
        try:
            markers = [path for path in self.state_dir.iterdir() if path.stat().st_mtime < now - days * DAY]
        except FileNotFoundError:
            return 0, []
        for marker in markers:
            tag, _, digest = marker.read_text().strip().partition("\n")
            if self.label(tag, BUILT_LABEL) == "1":
                removed = self.cli("rmi", tag)
                if removed.returncode != 0 and self.image_id(tag):
                    errors.append(f"image {tag}: {removed.stderr.decode(errors='replace').strip()}")
                    continue  # in use by a container: the next round tries again
                count += 1
            if digest and tag.startswith(REPOSITORY + ":") and self.store is not None:
                try:
                    self.store.delete(store_key(digest))
                except StoreError as exc:
                    errors.append(f"image export {digest}: {exc}")
                    continue
            marker.unlink(missing_ok=True)
        # What a build stopped beside another one left (no build lasts longer than its job's time limit); by the
        # clock, not `now`: a build running at this moment is never stale.
        stale = {cid for cid, created in self.working_containers().items()
                 if created < time.time() - max(DAY, 2 * self.timeout)}
        self.remove_containers(stale)
        return count, errors


async def job_image(builder: ImageBuilder, image: str | ImageBuild, workspace: Path, snapshot: SnapshotRecord | None,
                    spec: JobSpec, joblog: JobLog, cancel: asyncio.Event) -> str | Outcome:
    """The job's image name; one built from the checkout (as it is before caches and artifacts) is found, imported
    or built now, its output in the job's log. A resumed job keeps the image its snapshot ran in."""
    if isinstance(image, str):
        return image
    if snapshot is not None and snapshot.image:
        return snapshot.image
    try:
        return await builder.resolve(image, workspace, spec, BuildLog(
            joblog.system, lambda data: joblog.write(BUILD_STEP, "stdout", data),
            lambda: joblog.flush(BUILD_STEP)), cancel)
    except BuildFailed as exc:
        joblog.system(str(exc))
        return Outcome(exc.state, str(exc))
