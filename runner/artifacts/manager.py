"""Keeping a job's artifacts (after its steps) and fetching its needs' artifacts (before its first step)."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from config.artifacts import ArtifactSpec, effective_from
from config.pipeline import Pipeline
from runner.archive import ArchiveAborted, ArchiveError, ArchiveWriter, CorruptArchive, UnsafeArchive, extract
from runner.artifacts.collect import Collected, collect
from runner.artifacts.indexer import TarIndexer
from runner.artifacts.place import merge_into, remove_tree
from runner.cache import Meter, Metered, rate, repo_id, scopes, size_text
from runner.errors import QueueError
from runner.models import Job, JobState, Outcome
from runner.podman_user import PodmanUser
from runner.queue import ArtifactRecord, Queue
from runner.store import ObjectMissing, ObjectStore, StoreError

Say = Callable[[str], None]
DAY = 86400.0
PREFIX = "artifacts/"  # what this module writes to the store (maintenance knows it)


def artifact_key(repo: str, scope: str, job_id: int) -> str:
    """`artifacts/{repo}/{scope}/{job}/{random}.tar.zst`: a fork's PR writes below its own scope only."""
    part = {"": "%00", ".": "%2E", "..": "%2E%2E"}.get(quote(scope, safe="-_.~@+"), quote(scope, safe="-_.~@+"))
    return f"{PREFIX}{repo}/{part}/{job_id}/{uuid.uuid4().hex[:16]}.tar.zst"


def declared(job: Job) -> ArtifactSpec | None:
    """What a job of a pipeline declared (its one-job pipeline, as planned), or None."""
    table = (job.spec.pipeline or {}).get("artifacts")
    if not isinstance(table, dict) or not isinstance(table.get("paths"), list):
        return None
    return ArtifactSpec(paths=tuple(str(p) for p in table["paths"]), when=str(table.get("when", "success")))


@dataclass(frozen=True)
class _Plan:
    """Where a job's artifacts go: its repository and scope, and the rows it writes."""

    job: Job
    spec: ArtifactSpec
    repo: str
    scope: str
    now: float
    expires: float

    def record(self, collected: Collected | None = None, **values: object) -> ArtifactRecord:
        files = collected.files if collected else {}
        base = ArtifactRecord(
            id=0, job_id=self.job.id, pipeline_id=self.job.pipeline_id, job=self.job.name or "ci",
            display=self.job.display or self.job.name or "ci", repo=self.repo, scope=self.scope,
            paths=self.spec.paths, object=None, size=0, raw_size=None, checksum=None, file_count=len(files),
            total_size=sum(files.values()), error=None, created_at=self.now, expires_at=self.expires)
        return dataclasses.replace(base, **values)  # type: ignore[arg-type]


class ArtifactManager:
    """Uploads and restores artifacts. Every method blocks (run it in a thread). An upload never decides the job's
    state: its failures are log lines (and an index row saying why, for the dependants' messages)."""

    def __init__(self, store: ObjectStore, queue: Queue, user: PodmanUser, *, max_size: int, default_days: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.queue = queue
        self.user = user
        self.max_size = max_size
        self.default_days = default_days
        self.clock = clock

    def _owner(self) -> tuple[int, int] | None:
        return (self.user.uid, self.user.gid) if self.user.switch else None

    # -- upload ---------------------------------------------------------------------------------------------------

    def upload(self, job: Job, pipeline: Pipeline, workspace: Path, state: JobState, say: Say,
               abort: threading.Event | None = None) -> ArtifactRecord | None:
        """Keep the files the pipeline's `artifacts` match, when its `when` covers `state`; the indexed record."""
        spec = pipeline.artifacts
        if spec is None:
            return None
        if not spec.keeps(state):
            self._forget_earlier(job.id)
            say(f"artifacts: none kept: the job ended {state}, and `when = \"{spec.when}\"`"
                if state in (JobState.success, JobState.failure, JobState.timeout)
                else f"artifacts: none kept: a job that ended {state} keeps none")
            return None
        now = self.clock()
        plan = _Plan(job, spec, repo_id(job.spec.repo), scopes(job.spec)[0], now,
                     now + (spec.expire or self.default_days * DAY))
        try:
            collected = collect(workspace, spec.paths)
        except OSError as exc:
            return self._index(plan.record(error=f"cannot read the workspace: {exc}"), say)
        for problem in collected.problems:
            say(f"artifacts: {problem}")
        for pattern in collected.unmatched:
            say(f"artifacts: warning: {pattern!r} matched nothing")
        if not collected.files:
            say("artifacts: nothing to keep: no file matched " + ", ".join(spec.paths))
            return self._index(plan.record(), say)
        if collected.total > self.max_size:
            error = (f"{size_text(collected.total)} in {len(collected.files)} files is over runner.max_artifact_size "
                     f"({size_text(self.max_size)})")
            say(f"artifacts: not kept: {error}")
            return self._index(plan.record(collected, error=error), say)
        return self._pack(plan, collected, workspace, say, abort)

    def _pack(self, plan: _Plan, collected: Collected, workspace: Path, say: Say,
              abort: threading.Event | None) -> ArtifactRecord | None:
        key = artifact_key(plan.repo, plan.scope, plan.job.id)
        meter = Meter(say, "artifacts: uploading")
        indexer = TarIndexer()
        try:
            with ArchiveWriter(workspace, collected.entries(), listed=True, tap=indexer, abort=abort) as writer:
                self.store.put_stream(key, Metered(writer, meter))
                info = writer.info()
        except ArchiveAborted:
            self._delete_objects([plan.record(object=key)])
            say("artifacts: upload cancelled")
            return None
        except (StoreError, ArchiveError) as exc:
            self._delete_objects([plan.record(object=key)])  # whatever part of it reached the store
            say(f"artifacts: warning: not kept ({exc})")
            return self._index(plan.record(collected, error=f"the upload failed: {exc}"), say)
        files = tuple(sorted(indexer.files, key=lambda f: f.path))
        record = plan.record(collected, object=key, size=info.size, raw_size=info.raw_size, checksum=info.checksum,
                             files=files, file_count=len(files), total_size=sum(f.size for f in files))
        stored = self._index(record, say)
        if stored is None:
            with contextlib.suppress(StoreError):
                self.store.delete(key)
            return None
        expires = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(stored.expires_at))
        say(f"artifacts: kept {len(files)} file{'s' if len(files) != 1 else ''}, {size_text(stored.total_size)} "
            f"({rate(info.size, meter.seconds)}), until {expires}")
        return stored

    def _index(self, record: ArtifactRecord, say: Say) -> ArtifactRecord | None:
        """Write the row (replacing an earlier attempt's, whose object goes); None when the index failed."""
        try:
            stored, replaced = self.queue.put_artifact(record)
        except QueueError as exc:
            say(f"artifacts: warning: not recorded ({exc})")
            return None
        self._delete_objects(replaced)
        return stored

    def _forget_earlier(self, job_id: int) -> None:
        with contextlib.suppress(QueueError):
            self._delete_objects(self.queue.forget_job_artifacts(job_id))

    def _delete_objects(self, records: list[ArtifactRecord]) -> None:
        for old in records:
            if old.object is not None:
                with contextlib.suppress(StoreError):  # maintenance removes it later as an orphan
                    self.store.delete(old.object)

    def delete(self, record: ArtifactRecord) -> None:
        """Forget an artifact and delete its archive (StoreError propagates; the row is gone by then)."""
        self.queue.delete_artifact(record.id)
        if record.object is not None:
            self.store.delete(record.object)

    # -- restore --------------------------------------------------------------------------------------------------

    def restore(self, job: Job, pipeline: Pipeline, workspace: Path, say: Say,
                abort: threading.Event | None = None) -> Outcome | None:
        """Fetch the artifacts of the needs `artifacts_from` selects into `workspace`, before the job's container
        starts; None to go on, or the Outcome that ends the job (a missing or hostile artifact)."""
        names = effective_from(pipeline.artifacts_from, job.needs)
        if not names or job.pipeline_id is None:
            return None
        try:
            needs = [j for j in self.queue.jobs_of_pipeline(job.pipeline_id) if j.name in names]
            records = self.queue.artifacts_of_jobs([j.id for j in needs])
        except QueueError as exc:
            return Outcome(JobState.error, f"cannot read the artifact index: {exc}", infra=True)
        own = (repo_id(job.spec.repo), scopes(job.spec)[0])
        explicit = pipeline.artifacts_from is not None
        for need in needs:
            record = records.get(need.id)
            ending = self._check(need, record, own, explicit, say)
            if ending is not None:
                say(f"artifacts: {ending.error}")
                return ending
            if record is not None and record.object is not None and declared(need) is not None:
                ending = self._fetch(need, record, workspace, say, abort)
                if ending is not None:
                    say(f"artifacts: {ending.error}")
                    return ending
        return None

    def _check(self, need: Job, record: ArtifactRecord | None, own: tuple[str, str], explicit: bool,
               say: Say) -> Outcome | None:
        """Whether the need's artifacts can be fetched: the job fails only when a need that succeeded declared
        artifacts for success and they are not there; everything else is a log line."""
        name, spec = need.display or need.name, declared(need)
        if spec is None:
            if explicit:
                say(f"artifacts: job {name} declares no artifacts")
            return None
        if not spec.keeps(need.state):
            why = (f"keeps artifacts only when it {'fails' if spec.when == 'failure' else 'succeeds'}"
                   if need.state in (JobState.success, JobState.failure, JobState.timeout) else "keeps none then")
            say(f"artifacts: job {name} ended {need.state} and {why}; nothing to fetch from it")
            return None
        if record is None or record.error:
            why = f"were not kept: {record.error}" if record is not None and record.error else (
                "are not in the store (its log says why)")
            if need.state is not JobState.success:
                say(f"artifacts: job {name} ended {need.state}; its artifacts {why}")
                return None
            return Outcome(JobState.failure, f"the artifacts of job {name} ({', '.join(spec.paths)}) {why}")
        if (record.repo, record.scope) != own:
            return Outcome(JobState.failure, f"the artifacts of job {name} belong to {record.repo} scope "
                                             f"{record.scope}; not restored into a job of scope {own[1]}")
        if record.object is None:
            say(f"artifacts: job {name} kept none (its paths matched nothing)")
        return None

    def _fetch(self, need: Job, record: ArtifactRecord, workspace: Path, say: Say,
               abort: threading.Event | None) -> Outcome | None:
        name = need.display or need.name
        staging = workspace / f".forgeci-artifacts-{uuid.uuid4().hex[:8]}"
        meter = Meter(say, f"artifacts: fetching those of job {name}")
        assert record.object is not None
        try:
            staging.mkdir(mode=0o700)
            with self.store.get_stream(record.object) as stream:
                info = extract(stream, staging, checksum=record.checksum, owner=self._owner(), progress=meter,
                               abort=abort)
            try:
                replaced = merge_into(staging, workspace)
            except ArchiveError as exc:  # the checkout's own links or folders in the way: the pipeline's to fix
                return Outcome(JobState.failure, f"the artifacts of job {name} cannot be placed: {exc}")
        except ObjectMissing:
            return Outcome(JobState.failure, f"the artifacts of job {name} are indexed but gone from the store")
        except StoreError as exc:
            return Outcome(JobState.error, f"cannot fetch the artifacts of job {name}: {exc}", infra=True)
        except ArchiveAborted:
            return Outcome(JobState.cancelled, "cancelled while fetching artifacts")
        except (CorruptArchive, UnsafeArchive) as exc:
            return Outcome(JobState.failure, f"the artifacts of job {name} were refused: {exc}")
        except (ArchiveError, OSError) as exc:
            return Outcome(JobState.error, f"cannot restore the artifacts of job {name}: {exc}", infra=True)
        finally:
            remove_tree(staging)
        more = f"; {replaced} replaced files of the checkout or of another need" if replaced else ""
        say(f"artifacts: fetched {info.files} file{'s' if info.files != 1 else ''} of job {name} "
            f"({rate(info.size, meter.seconds)}){more}")
        return None
