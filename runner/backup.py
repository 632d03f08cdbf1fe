"""The queue database's backups and upgrades: online backup (verified), restore into a stopped instance, migrate."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from runner.errors import RunnerError
from runner.layout import DataLayout
from runner.queue import BUSY_TIMEOUT, MIGRATIONS, Queue
from runner.runtime import DataDirLock

# The tables whose rows a backup counts, so an operator can see at a glance that it holds what they expect.
COUNTED = ("jobs", "pipelines", "steps", "cache_entries", "snapshots", "deliveries", "job_metrics")


class BackupError(RunnerError):
    """A backup could not be written or verified, or a file is not a usable forgeci queue database."""


@dataclass(frozen=True)
class DatabaseInfo:
    """What a verified queue database holds: its schema version, row counts, the newest job id."""

    path: Path
    schema_version: int
    rows: dict[str, int]
    max_job_id: int
    size: int

    def summary(self) -> str:
        counts = ", ".join(f"{n} {table}" for table, n in self.rows.items() if table in ("jobs", "pipelines"))
        return f"schema version {self.schema_version}, {counts or 'no jobs'}, {self.size / 1e6:.1f} MB"


def inspect_database(path: Path, *, readonly: bool = True) -> DatabaseInfo:
    """Verify `path` as a forgeci queue database (integrity check, schema version) and count its rows.

    `readonly` opens it so that nothing can change it (a backup stays byte for byte what was written); a database
    in WAL mode without its -shm file cannot be opened that way, so live databases pass readonly=False.
    """
    if not path.is_file():
        raise BackupError(f"{path}: no such file")
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)
        else:
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT)
    except sqlite3.Error as exc:
        raise BackupError(f"{path}: cannot open: {exc}") from exc
    try:
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check").fetchall()]
        if problems != ["ok"]:
            raise BackupError(f"{path}: damaged: {'; '.join(problems[:5])}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version < 1 or "jobs" not in tables:
            raise BackupError(f"{path}: not a forgeci queue database (no jobs table, schema version {version})")
        rows = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in COUNTED if t in tables}
        max_id = conn.execute("SELECT coalesce(max(id), 0) FROM jobs").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path}: not a readable SQLite database: {exc}") from exc
    finally:
        conn.close()
    return DatabaseInfo(path, version, rows, max_id, path.stat().st_size)


def schema_version_of(path: Path) -> int | None:
    """The schema version in the database file's header (PRAGMA user_version: 4 bytes at offset 60), read without
    opening it as a database, so nothing (no -wal or -shm file) is created; None for a file that is not SQLite.
    A migration still only in the WAL shows once it is checkpointed."""
    try:
        with path.open("rb") as file:
            header = file.read(64)
    except OSError:
        return None
    if len(header) < 64 or not header.startswith(b"SQLite format 3\x00"):
        return None
    return int.from_bytes(header[60:64], "big")


def backup_database(db: Path, dest: Path) -> DatabaseInfo:
    """Copy the live queue database `db` to `dest` with SQLite's online backup API, then verify the copy.

    Safe while `forgeci serve` writes: the copy is one consistent snapshot (a single backup step runs inside one
    read transaction; in WAL mode writers carry on meanwhile). It is written next to `dest` and renamed into place
    only once verified, so `dest` is never a half-written file.
    """
    if not db.is_file():
        raise BackupError(f"no queue database at {db} (is this the server's host and settings file?)")
    dest = dest.absolute()
    if dest.exists() and dest.is_dir():
        raise BackupError(f"{dest} is a folder; name the backup file")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        src = sqlite3.connect(db, timeout=BUSY_TIMEOUT)
        try:
            with contextlib.closing(sqlite3.connect(tmp)) as out:
                src.backup(out)  # pages=-1: every page in one step, i.e. one snapshot of the source
                # The copy carries the source's WAL flag; a backup is one self-contained file.
                out.execute("PRAGMA journal_mode = DELETE")
            source_version = src.execute("PRAGMA user_version").fetchone()[0]
        finally:
            src.close()
        _fsync(tmp)
        info = inspect_database(tmp)
        if info.schema_version != source_version:
            raise BackupError(f"the copy has schema version {info.schema_version}, the database {source_version}")
        os.replace(tmp, dest)
        _fsync(dest.parent)
    except sqlite3.Error as exc:
        raise BackupError(f"backing up {db} to {dest}: {exc}") from exc
    except OSError as exc:
        raise BackupError(f"writing {dest}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return DatabaseInfo(dest, info.schema_version, info.rows, info.max_job_id, info.size)


@dataclass(frozen=True)
class RestoreReport:
    restored: DatabaseInfo
    schema_after: int
    previous: Path | None  # where the database that was replaced went
    moved_logs: Path | None  # where logs newer than the backup went


def restore_database(backup: Path, layout: DataLayout, now: float | None = None) -> RestoreReport:
    """Put a verified backup in place as the instance's queue database; the instance must be stopped.

    The database it replaces is kept beside it (`queue.db.before-restore-TIME`). Logs of jobs newer than the
    backup move to `logs/after-backup-TIME/`: job ids continue from the backup's newest, so a new job would
    otherwise append to the log of a job the restore forgot. The restored database is migrated to this
    forgeci's schema at once, so a failure shows here rather than at the next start.
    """
    if not backup.is_file():
        raise BackupError(f"{backup}: no such file")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    layout.root.mkdir(parents=True, exist_ok=True)
    with _stopped(layout):
        # Checked as a copy in the data dir, so the backup file itself is never opened for writing (a raw copy
        # of a queue.db in WAL mode can only be opened read-write).
        tmp = layout.db.with_name(f".{layout.db.name}.restoring")
        try:
            shutil.copyfile(backup, tmp)
            wal = backup.with_name(backup.name + "-wal")
            if wal.is_file():  # a raw copy of a live queue.db: its last transactions are in the WAL file
                shutil.copyfile(wal, tmp.with_name(tmp.name + "-wal"))
            info = inspect_database(tmp, readonly=False)  # closing it folds a WAL copy into the file
            if info.schema_version > len(MIGRATIONS):
                raise BackupError(f"{backup} has schema version {info.schema_version}, newer than this forgeci "
                                  f"knows ({len(MIGRATIONS)}): restore it with the forgeci that made it")
            _fsync(tmp)
            previous = _set_aside(layout.db, layout.db.with_name(f"{layout.db.name}.before-restore-{stamp}"))
            os.replace(tmp, layout.db)
            _fsync(layout.root)
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
        moved = _move_newer_logs(layout, info.max_job_id, layout.logs / f"after-backup-{stamp}")
        with Queue(layout.db) as queue:  # applies the migrations this forgeci has and the backup lacks
            after = queue._conn.execute("PRAGMA user_version").fetchone()[0]
    return RestoreReport(DatabaseInfo(backup, info.schema_version, info.rows, info.max_job_id,
                                      backup.stat().st_size), after, previous, moved)


@dataclass(frozen=True)
class MigrateReport:
    before: int
    after: int
    copy: Path | None  # the database as it was, when a migration ran


def migrate_database(layout: DataLayout, now: float | None = None) -> MigrateReport:
    """Bring a stopped instance's queue database to this forgeci's schema, after keeping a copy of it.

    `forgeci serve` migrates on start too; this is the step an upgrade runs by hand, with the copy to go back to.
    """
    if not layout.db.is_file():
        raise BackupError(f"no queue database at {layout.db} (is this the server's host and settings file?)")
    with _stopped(layout):
        before = inspect_database(layout.db, readonly=False).schema_version
        if before > len(MIGRATIONS):
            Queue(layout.db).close()  # raises the queue's own message: the database is newer than this forgeci
        if before == len(MIGRATIONS):
            return MigrateReport(before, before, None)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
        copy = backup_database(layout.db, layout.db.with_name(f"{layout.db.name}.v{before}-{stamp}")).path
        with Queue(layout.db) as queue:
            after = queue._conn.execute("PRAGMA user_version").fetchone()[0]
    return MigrateReport(before, after, copy)


@contextlib.contextmanager
def _stopped(layout: DataLayout) -> Iterator[None]:
    """Hold the data dir's serve lock: InstanceLocked (naming the pid) while a server runs on it."""
    lock = DataDirLock(layout.root)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _set_aside(db: Path, target: Path) -> Path | None:
    """Move the current database (with its WAL folded in, when it opens) to `target`; None when there is none."""
    if not db.exists():
        return None
    try:
        backup_database(db, target)
    except BackupError:
        shutil.copyfile(db, target)  # damaged: keep its bytes as they are, whatever they hold
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            db.with_name(db.name + suffix).unlink()
    return target


def _move_newer_logs(layout: DataLayout, max_job_id: int, target: Path) -> Path | None:
    moved = 0
    if layout.logs.is_dir():
        for entry in os.scandir(layout.logs):
            stem = entry.name[:-4] if entry.name.endswith(".log") else ""
            if stem.isdigit() and int(stem) > max_job_id and entry.is_file(follow_symlinks=False):
                target.mkdir(parents=True, exist_ok=True)
                os.replace(entry.path, target / entry.name)
                moved += 1
    return target if moved else None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
