"""The artifact index (migration 6): one row per job that tried to keep artifacts, and the files of each."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from runner.queue.base import QueueBase

_COLUMNS = ("id, job_id, pipeline_id, job, display, repo, scope, paths, object, size, raw_size, checksum, file_count,"
            " total_size, error, created_at, expires_at")
_INSERT = f"INSERT INTO artifacts ({_COLUMNS}) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_FILES = "SELECT path, size, sha256 FROM artifact_files WHERE artifact_id = ? ORDER BY path"

ArtifactState = Literal["kept", "empty", "not kept"]


@dataclass(frozen=True)
class ArtifactFile:
    """One file of an artifact, as the index knows it."""

    path: str  # relative to the workspace, `/`-separated
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class ArtifactRecord:
    """What a job's last attempt kept: an archive in the store (object), or why there is none (error; neither:
    its paths matched nothing)."""

    id: int  # 0 until the index gives it one
    job_id: int
    pipeline_id: int | None
    job: str  # the job's name in the pipeline (what `needs` and `artifacts_from` say)
    display: str  # the member's display name
    repo: str  # repo id and scope (runner.cache): a restore never crosses either
    scope: str
    paths: tuple[str, ...]  # the declared globs
    object: str | None
    size: int  # of the archive
    raw_size: int | None  # of the tar inside it
    checksum: str | None  # sha256 of the archive
    file_count: int
    total_size: int  # of the files
    error: str | None
    created_at: float
    expires_at: float
    files: tuple[ArtifactFile, ...] = ()

    @property
    def state(self) -> ArtifactState:
        if self.object is not None:
            return "kept"
        return "not kept" if self.error else "empty"

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "files"}
        return {**out, "paths": list(self.paths), "state": self.state, "files": [f.to_dict() for f in self.files]}


class ArtifactQueries(QueueBase):
    """Index rows of artifacts: one per job (a later attempt's replaces it), read by job, pipeline or id."""

    def put_artifact(self, record: ArtifactRecord) -> tuple[ArtifactRecord, list[ArtifactRecord]]:
        """Index `record` and its files, replacing what an earlier attempt of the same job kept; the new record
        (with its id) and the replaced ones (whose objects are the caller's to delete)."""
        with self._transaction() as conn:
            replaced = self._drop_job(conn, record.job_id)
            cur = conn.execute(_INSERT, (
                record.job_id, record.pipeline_id, record.job, record.display, record.repo, record.scope,
                json.dumps(list(record.paths)), record.object, record.size, record.raw_size, record.checksum,
                record.file_count, record.total_size, record.error, record.created_at, record.expires_at))
            assert cur.lastrowid is not None
            conn.executemany("INSERT INTO artifact_files (artifact_id, path, size, sha256) VALUES (?, ?, ?, ?)",
                             [(cur.lastrowid, f.path, f.size, f.sha256) for f in record.files])
        return replace(record, id=cur.lastrowid), replaced

    def forget_job_artifacts(self, job_id: int) -> list[ArtifactRecord]:
        """Drop what earlier attempts of a job kept (its last attempt keeps none); their objects are to delete."""
        with self._transaction() as conn:
            return self._drop_job(conn, job_id)

    @staticmethod
    def _drop_job(conn: sqlite3.Connection, job_id: int) -> list[ArtifactRecord]:
        rows = conn.execute(f"DELETE FROM artifacts WHERE job_id = ? RETURNING {_COLUMNS}", (job_id,)).fetchall()
        return [_record(row) for row in rows]

    def artifact(self, artifact_id: int, *, files: bool = True) -> ArtifactRecord | None:
        with self._transaction("BEGIN") as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM artifacts WHERE id = ?", (artifact_id,)).fetchone()
            return _record(row, _files(conn, row[0]) if files else ()) if row else None

    def artifacts_of(self, *, job_id: int | None = None, pipeline_id: int | None = None,
                     files: bool = True) -> list[ArtifactRecord]:
        """The artifacts of one job, or of every job of one pipeline (in job order)."""
        if (job_id is None) == (pipeline_id is None):
            raise ValueError("artifacts_of() needs exactly one of job_id and pipeline_id")
        column, value = ("job_id", job_id) if job_id is not None else ("pipeline_id", pipeline_id)
        with self._transaction("BEGIN") as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM artifacts WHERE {column} = ? ORDER BY job_id",
                                (value,)).fetchall()
            return [_record(row, _files(conn, row[0]) if files else ()) for row in rows]

    def artifacts_of_jobs(self, job_ids: Sequence[int]) -> dict[int, ArtifactRecord]:
        """Job id -> its artifact (with files), for the jobs that have one."""
        with self._transaction("BEGIN") as conn:
            found = {}
            for job_id in job_ids:
                row = conn.execute(f"SELECT {_COLUMNS} FROM artifacts WHERE job_id = ?", (job_id,)).fetchone()
                if row is not None:
                    found[job_id] = _record(row, _files(conn, row[0]))
            return found

    def artifact_file(self, artifact_id: int, path: str) -> ArtifactFile | None:
        with self._transaction("BEGIN") as conn:
            row = conn.execute("SELECT path, size, sha256 FROM artifact_files WHERE artifact_id = ? AND path = ?",
                               (artifact_id, path)).fetchone()
        return ArtifactFile(*row) if row else None

    def expired_artifacts(self, now: float) -> list[ArtifactRecord]:
        """Rows whose time is up (pruning), oldest first, without their files."""
        with self._transaction("BEGIN") as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM artifacts WHERE expires_at <= ? ORDER BY expires_at",
                                (now,)).fetchall()
        return [_record(row) for row in rows]

    def delete_artifact(self, artifact_id: int) -> bool:
        with self._transaction() as conn:
            return conn.execute("DELETE FROM artifacts WHERE id = ?", (artifact_id,)).rowcount == 1


def _files(conn: sqlite3.Connection, artifact_id: int) -> tuple[ArtifactFile, ...]:
    return tuple(ArtifactFile(*row) for row in conn.execute(_FILES, (artifact_id,)).fetchall())


def _record(row: tuple[Any, ...], files: tuple[ArtifactFile, ...] = ()) -> ArtifactRecord:
    (artifact_id, job_id, pipeline_id, job, display, repo, scope, paths, obj, size, raw_size, checksum, count, total,
     error, created_at, expires_at) = row
    return ArtifactRecord(artifact_id, job_id, pipeline_id, job, display, repo, scope, tuple(json.loads(paths)), obj,
                          size, raw_size, checksum, count, total, error, created_at, expires_at, files)
