"""The queue's PostgreSQL database: a psycopg pool, transactions with sqlite3's cursor shape, migrations, wake-ups.

The queue's statements are written for SQLite; a PostgresConnection runs them translated (runner.queue.dialect)
and answers like sqlite3 (`execute(...).fetchone()`, `rowcount`, `lastrowid`), so the query mixins can share their
SQL between the backends. Durability: every connection runs with `synchronous_commit = on` (also when the server's
default is lower): COMMIT returns only when the WAL is flushed (and, with a synchronous standby, on it too), so a
202 to a webhook means its jobs survive a crash of PostgreSQL or of its machine. Concurrent committers share one
WAL flush (group commit), so this costs little under load; `off` would lose acknowledged work on a crash.

runner.queue.postgres_queue.PostgresQueue runs the whole Queue on it; runner.backend opens it for `[queue] url`.
"""

from __future__ import annotations

import re
import select
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from runner.errors import QueueError
from runner.queue.dialect import postgres
from runner.queue.schema import MIGRATIONS, postgres_script

WAKE_CHANNEL = "forgeci_queue"  # NOTIFY on it when a job becomes claimable; LISTENers (runners) wake at commit
# The tables whose rows SQLite numbers itself (INTEGER PRIMARY KEY id): an INSERT into one returns its id.
IDENTITY_TABLES = frozenset({"jobs", "pipelines", "artifacts", "notifications", "usage"})
_INSERT = re.compile(r"^\s*INSERT\s+INTO\s+(\w+)", re.I)
_WRITES_JOBS = re.compile(r"^\s*(INSERT\s+INTO|UPDATE)\s+jobs\b", re.I)
_SCHEMA_LOCK = 0x666F7267  # pg_advisory_xact_lock key: one migrator at a time across coordinators


def conninfo(url: str, password: str | None = None) -> str:
    """The libpq connection string of `[queue] url`, with the password from `queue.password_env` when set."""
    return make_conninfo(url, **({"password": password} if password else {}))


class PostgresCursor:
    """What sqlite3's cursor offers the queue: fetchone, fetchall, iteration, rowcount, lastrowid."""

    def __init__(self, cursor: psycopg.Cursor[Any], lastrowid: int | None = None) -> None:
        self._cursor, self.lastrowid, self.rowcount = cursor, lastrowid, cursor.rowcount

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._cursor.fetchone() if self._cursor.description else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._cursor.fetchall() if self._cursor.description else []

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.fetchall())


class PostgresConnection:
    """One pooled connection inside one transaction, running SQLite-dialect statements."""

    def __init__(self, conn: psycopg.Connection[Any], overrides: Mapping[str, tuple[str, ...]] | None = None) -> None:
        self.raw = conn
        self._overrides = overrides or {}
        self.wrote_jobs = False  # an INSERT or UPDATE of jobs ran: claimers elsewhere may have work (or a slot)

    def execute(self, statement: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> PostgresCursor:
        # Client-side binding, as sqlite3 does: a NULL parameter needs no type, the same SQL serves both.
        self.wrote_jobs = self.wrote_jobs or bool(_WRITES_JOBS.match(statement))
        cursor = psycopg.ClientCursor(self.raw)
        if (override := self._overrides.get(statement)) is not None:
            *before, translated = override  # statements of its own first (a lock), then the statement itself
            for prelude in before:
                cursor.execute(prelude, _params(params))
            returns_id = False
        else:
            translated, returns_id = _statement(statement)
        cursor.execute(translated, _params(params))
        lastrowid = None
        if returns_id:
            row = cursor.fetchone()
            lastrowid = row[0] if row else None
        return PostgresCursor(cursor, lastrowid)

    def executemany(self, statement: str, rows: Sequence[Sequence[Any] | Mapping[str, Any]]) -> None:
        translated = postgres(statement)
        with psycopg.ClientCursor(self.raw) as cursor:
            cursor.executemany(translated, [_params(row) for row in rows])

    def notify(self, channel: str = WAKE_CHANNEL, payload: str = "") -> None:
        """Wake the channel's listeners when this transaction commits (never for a rolled-back one)."""
        self.raw.execute("SELECT pg_notify(%s, %s)", (channel, payload))


def _statement(statement: str) -> tuple[str, bool]:
    """The translated statement; an INSERT into an identity table without RETURNING returns its id."""
    translated = postgres(statement)
    match = _INSERT.match(statement)
    if match and match.group(1) in IDENTITY_TABLES and not re.search(r"\bRETURNING\b", statement, re.I):
        return translated.rstrip().rstrip(";") + " RETURNING id", True
    return translated, False


def _params(params: Sequence[Any] | Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
    """sqlite3 stores booleans as 0/1 in INTEGER columns; PostgreSQL's BIGINT refuses a boolean parameter."""
    if isinstance(params, Mapping):
        return {key: int(value) if isinstance(value, bool) else value for key, value in params.items()}
    return [int(value) if isinstance(value, bool) else value for value in params]


class PostgresDatabase:
    """The pool of one queue database. `transaction()` is the PostgreSQL counterpart of QueueBase._transaction."""

    def __init__(self, url: str, password: str | None = None, *, min_size: int = 1, max_size: int = 8,
                 timeout: float = 30.0) -> None:
        self._conninfo = conninfo(url, password)
        self.name = _display(url)
        # check: a connection that broke while idle in the pool (a restarted server) is replaced, not handed out.
        self._pool = ConnectionPool(self._conninfo, min_size=min_size, max_size=max_size, timeout=timeout,
                                    open=False, configure=_configure, check=ConnectionPool.check_connection)
        try:
            self._pool.open(wait=True, timeout=timeout)
        except PoolTimeout as exc:
            self._pool.close()
            raise QueueError(f"cannot connect to the PostgreSQL queue {self.name} within {timeout:g}s") from exc
        try:
            self.migrate()
        except BaseException:
            self._pool.close()
            raise

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> PostgresDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self, now: float | None = None, overrides: Mapping[str, tuple[str, ...]] | None = None,
                    snapshot: bool = False) -> Iterator[PostgresConnection]:
        """One READ COMMITTED transaction (writers; the claim serializes itself), or with `snapshot` a REPEATABLE
        READ one (the readers of SQLite's plain BEGIN); a failure rolls back and surfaces as QueueError."""
        try:
            with self._pool.connection() as conn, conn.transaction():
                if snapshot:  # SQLite's plain BEGIN: every read of the transaction sees one state of the database
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                if now is not None:  # the queue's clock, for triggers (forgeci_usage): SQLite calls it in Python
                    conn.execute("SELECT set_config('forgeci.now', %s, true)", (repr(float(now)),))
                yield PostgresConnection(conn, overrides)
        except psycopg.Error as exc:
            raise QueueError(f"PostgreSQL queue {self.name}: {_first_line(exc)}") from exc
        except PoolTimeout as exc:
            raise QueueError(f"PostgreSQL queue {self.name}: no connection ({exc})") from exc

    def version(self) -> int:
        with self.transaction() as conn:
            row = conn.raw.execute("SELECT to_regclass('forgeci_schema') IS NOT NULL").fetchone()
            if not row or not row[0]:
                return 0
            found = conn.raw.execute("SELECT version FROM forgeci_schema").fetchone()
            return int(found[0]) if found else 0

    def migrate(self) -> None:
        """Apply the migrations the database lacks, all in one transaction, one migrator at a time."""
        with self.transaction() as conn:
            raw = conn.raw
            raw.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            raw.execute("CREATE TABLE IF NOT EXISTS forgeci_schema (version INTEGER NOT NULL)")
            row = raw.execute("SELECT version FROM forgeci_schema").fetchone()
            version = int(row[0]) if row else 0
            if row is None:
                raw.execute("INSERT INTO forgeci_schema (version) VALUES (0)")
            if version > len(MIGRATIONS):
                raise QueueError(
                    f"the PostgreSQL queue {self.name} has schema version {version}, newer than this forgeci knows "
                    f"({len(MIGRATIONS)}): it was written by a newer forgeci; run that version")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                raw.execute(postgres_script(script).encode())  # bytes: a DDL script, no placeholders
                raw.execute("UPDATE forgeci_schema SET version = %s", (number,))

    def listener(self, channel: str = WAKE_CHANNEL) -> Listener:
        return Listener(self._conninfo, channel)


class Listener:
    """A connection of its own LISTENing on a channel: `wait(timeout)` is True when a NOTIFY came."""

    def __init__(self, info: str, channel: str) -> None:
        self._conn = psycopg.connect(info, autocommit=True, connect_timeout=10)  # a host that is away: fail, retry
        self._conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(channel)))

    def wait(self, timeout: float) -> bool:
        woken = False
        for _ in self._conn.notifies(timeout=timeout, stop_after=1):
            woken = True
        # Drain what else arrived meanwhile: one wake-up per burst of commits is enough.
        while select.select([self._conn.fileno()], [], [], 0)[0]:
            got = list(self._conn.notifies(timeout=0, stop_after=64))
            if not got:
                break
        return woken

    def close(self) -> None:
        self._conn.close()


class _NumberLoader(psycopg.adapt.Loader):
    """numeric (what sum() over BIGINT gives) as sqlite3 answers: an int when whole, else a float."""

    def load(self, data: Any) -> int | float:
        text = bytes(data).decode()
        return int(text) if text.lstrip("-").isdigit() else float(text)


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.adapters.register_loader("numeric", _NumberLoader)
    conn.execute("SET synchronous_commit = on")  # see the module's doc: a 202 means committed
    conn.commit()


def _display(url: str) -> str:
    """The url without anything secret (a password in it is refused by the settings, but never echo one)."""
    return re.sub(r"//[^@/]*:[^@/]*@", "//***@", url)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
