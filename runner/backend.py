"""Which queue this installation runs on, and how its workers hear of new work: the one place that chooses.

`[queue] url = ""` (the default) is SQLite in `data_dir/queue.db`, woken in-process (JobControl's wake-ups: a
single coordinator writes the file). `url = "postgresql://..."` is runner.queue.postgres_queue.PostgresQueue, its
password from the variable `queue.password_env` names; its workers are woken in-process too *and* by a thread
LISTENing on the queue's channel (runner.wakeups.ListenWakeups), so work committed by another process (a
coordinator, `forgeci agents token`, a webhook on another server) is claimed at its commit rather than at the
next poll. Everything else that used the SQLite file directly asks here: `open_queue` (maintenance, `forgeci debug`,
agent tokens), `refuse_on_postgres` (file backups and restores: pg_dump's job), `check_postgres` (doctor).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from config.errors import ConfigError
from config.settings import Settings, env_value
from runner.errors import QueueError
from runner.layout import DataLayout
from runner.queue import MIGRATIONS, Queue

if TYPE_CHECKING:
    from runner.wakeups import ListenWakeups

CONNECT_TIMEOUT = 10  # seconds: the doctor's and the listener's connection attempts to a PostgreSQL host


def is_postgres(settings: Settings) -> bool:
    return bool(settings.queue.url)


def queue_password(settings: Settings, environ: Mapping[str, str] = os.environ) -> str | None:
    return env_value(settings.queue.password_env, environ) or None


def open_queue(settings: Settings, environ: Mapping[str, str] = os.environ, *, create: bool = True) -> Queue:
    """The installation's queue (migrated). Without `create`, a missing SQLite file is a QueueError (the commands
    that must run on the server's host and settings); a PostgreSQL database is always the configured one."""
    options: dict[str, Any] = {"max_concurrent": settings.queue.max_concurrent,
                               "max_retries": settings.queue.max_retries}
    if is_postgres(settings):
        from runner.queue.postgres_queue import PostgresQueue  # psycopg only when it is used

        return PostgresQueue(settings.queue.url, password=queue_password(settings, environ), **options)
    layout = DataLayout(settings.data_dir)
    if not create and not layout.db.exists():
        raise QueueError(f"no forgeci queue at {layout.db} (is this the server's host and settings file?)")
    return Queue(layout.db, **options)


def listen_wakeups(queue: Queue, wake: Callable[[], None]) -> ListenWakeups | None:
    """The LISTEN thread that calls `wake` (from its own thread) at every commit that wrote jobs, from any
    process; None for SQLite, whose only writers are this process's (woken in-process)."""
    listener = getattr(queue, "listener", None)
    if listener is None:
        return None
    from runner.wakeups import ListenWakeups

    return ListenWakeups(listener, wake)


def refuse_on_postgres(settings: Settings, what: str) -> None:
    """A ConfigError (exit 2) for the commands that work on the SQLite file only."""
    if is_postgres(settings):
        raise ConfigError(
            f"{what}: the queue is on PostgreSQL (queue.url), not in a file: back it up with pg_dump and restore it "
            f"with pg_restore (or your database's backup tooling: base backups, WAL archiving)")


def postgres_schema(settings: Settings, environ: Mapping[str, str] = os.environ) -> tuple[int, str]:
    """(schema version, the server's default synchronous_commit) of the PostgreSQL queue, read-only: 0 before
    forgeci made its tables. QueueError naming the database (never a password) when it cannot be read."""
    import psycopg

    from runner.queue.postgres import _display, conninfo

    try:
        with psycopg.connect(conninfo(settings.queue.url, queue_password(settings, environ)), autocommit=True,
                             connect_timeout=CONNECT_TIMEOUT) as conn:
            row = conn.execute("SELECT to_regclass('forgeci_schema') IS NOT NULL").fetchone()
            found = conn.execute("SELECT version FROM forgeci_schema").fetchone() if row and row[0] else None
            setting = conn.execute("SHOW synchronous_commit").fetchone()
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise QueueError(f"PostgreSQL queue {_display(settings.queue.url)}: {first}") from exc
    return (int(found[0]) if found else 0), (str(setting[0]) if setting else "?")


def check_postgres(settings: Settings, environ: Mapping[str, str] = os.environ) -> tuple[str, str, str]:
    """(level, detail, fix) of the doctor's queue check on PostgreSQL: reachable, schema version known. Read-only:
    it never migrates (`forgeci serve` and `forgeci db migrate` do)."""
    from runner.queue.postgres import _display

    name = _display(settings.queue.url)
    try:
        version, setting = postgres_schema(settings, environ)
    except QueueError as exc:
        return ("fail", str(exc), f"check queue.url, that PostgreSQL runs and accepts this user, and "
                                  f"${settings.queue.password_env}")
    known = len(MIGRATIONS)
    default = f" (server default synchronous_commit = {setting}; forgeci's sessions set on)"
    if version == 0:
        return ("ok", f"{name}: reachable, no forgeci tables yet (forgeci serve creates them){default}", "")
    if version > known:
        return ("fail", f"{name}: schema version {version}, newer than this forgeci ({known})",
                "run the forgeci that wrote it")
    if version < known:
        return ("warn", f"{name}: schema version {version}; this forgeci has {known}",
                "forgeci db migrate (take a pg_dump first; forgeci serve would migrate at start)")
    return ("ok", f"{name}: schema version {version}{default}", "")
