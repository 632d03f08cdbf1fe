"""The queue's PostgreSQL database: a psycopg pool, transactions with sqlite3's cursor shape, migrations, wake-ups.

The queue's statements are written for SQLite; a PostgresConnection runs them translated (runner.queue.dialect)
and answers like sqlite3 (`execute(...).fetchone()`, `rowcount`, `lastrowid`), so the query mixins can share their
SQL between the backends. Durability: every connection runs with `synchronous_commit = on` (also when the server's
default is lower): COMMIT returns only when the WAL is flushed (and, with a synchronous standby, on it too), so a
202 to a webhook means its jobs survive a crash of PostgreSQL or of its machine. Concurrent committers share one
WAL flush (group commit), so this costs little under load; `off` would lose acknowledged work on a crash. The
exceptions, argued where they are: a claim (runner.queue.postgres_queue) and the NOTIFYs after a commit.

runner.queue.postgres_queue.PostgresQueue runs the whole Queue on it; runner.backend opens it for `[queue] url`.
"""

from __future__ import annotations

import logging
import re
import select
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import pq
from psycopg import sql as pgsql
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from runner.errors import QueueError
from runner.queue.cluster import STATUS_CHANNEL
from runner.queue.dialect import postgres
from runner.queue.migration import postgres_script
from runner.queue.schema import MIGRATIONS

log = logging.getLogger(__name__)
WAKE_CHANNEL = "forgeci_queue"  # NOTIFY on it when a job becomes claimable; LISTENers (runners) wake at commit
# The tables whose rows SQLite numbers itself (INTEGER PRIMARY KEY id): an INSERT into one returns its id.
IDENTITY_TABLES = frozenset({"jobs", "pipelines", "artifacts", "notifications"})
_INSERT = re.compile(r"^\s*INSERT\s+INTO\s+(\w+)", re.I)
_WRITES_JOBS = re.compile(r"^\s*(INSERT\s+INTO|UPDATE)\s+jobs\b", re.I)
_WRITES_STATES = re.compile(r"^\s*(INSERT\s+INTO|UPDATE)\s+(jobs|pipelines)\b", re.I)
# The status triggers (runner/queue/schema.py, postgres_triggers.py) set this session setting on a state change;
# the connection that committed the change NOTIFYs STATUS_CHANNEL after its COMMIT and clears it (see
# PostgresConnection.commit).
STATUS_FLAG = "forgeci.status_changed"
_STATUS_NOTIFY = (f"SELECT pg_notify('{STATUS_CHANNEL}', ''), set_config('{STATUS_FLAG}', '', false) "
                  f"WHERE current_setting('{STATUS_FLAG}', true) = 'y'")
_SCHEMA_LOCK = 0x666F7267  # pg_advisory_xact_lock key: one migrator at a time across coordinators


def conninfo(url: str, password: str | None = None) -> str:
    """The libpq connection string of `[queue] url`, with the password from `queue.password_env` when set."""
    return make_conninfo(url, **({"password": password} if password else {}))


class PostgresCursor:
    """What sqlite3's cursor offers the queue: fetchone, fetchall, iteration, rowcount, lastrowid."""

    def __init__(self, cursor: psycopg.Cursor[Any], lastrowid: int | None = None) -> None:
        self._cursor, self.lastrowid, self.rowcount = cursor, lastrowid, cursor.rowcount
        # Rows or none (an UPDATE without RETURNING): the result's status says so without building `description`.
        self._rows = cursor.pgresult is not None and cursor.pgresult.status == pq.ExecStatus.TUPLES_OK

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._cursor.fetchone() if self._rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._cursor.fetchall() if self._rows else []

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.fetchall())


class PostgresConnection:
    """One pooled connection inside one transaction, running SQLite-dialect statements.

    Round trips are what a transaction costs (the claim's lock is held through them), so the connection is in
    autocommit mode and sends the transaction's own statements itself, riding on others: its BEGIN (with the
    clock and the prelude: the claim's lock, settings of this transaction) with the first statement, its NOTIFYs
    with the COMMIT. A statement and what rides with it go as one simple-protocol message, with client-side
    binding, as sqlite3 binds: a NULL parameter needs no type."""

    def __init__(self, conn: psycopg.Connection[Any], overrides: Mapping[str, str] | None = None,
                 begin: str = "BEGIN", now: float | None = None, prelude: Sequence[str] = ()) -> None:
        self._raw = conn
        self._overrides = overrides or _NO_OVERRIDES
        # BEGIN, and the queue's clock for triggers (forgeci_job_changed; SQLite calls it in Python), sent with the
        # first statement; "" once sent. The clock is a parameter: the message's text stays the same, psycopg's
        # cache of converted queries serves it. The prelude's expressions share one SELECT with it: one more result
        # at most.
        exprs = [*prelude, *(["set_config('forgeci.now', {now}, true)"] if now is not None else [])]
        self._pending = f"{begin}; SELECT {', '.join(exprs)}" if exprs else begin
        self._now = repr(float(now)) if now is not None else None
        self._notifies: list[tuple[str, str]] = []
        self.committed = False  # by a statement's message (execute(commit=True))
        self.wrote_jobs = False  # an INSERT or UPDATE of jobs ran: claimers elsewhere may have work (or a slot)
        self.wrote_states = False  # one of jobs or pipelines: a status trigger may have flagged the session

    @property
    def began(self) -> bool:
        return not self._pending

    @property
    def raw(self) -> psycopg.Connection[Any]:
        """The psycopg connection, inside the transaction (its BEGIN sent)."""
        if self._pending:
            self._raw.cursor().execute(self._pending.format(now="%s"), [self._now] if self._now else None)
            self._pending = ""
        return self._raw

    def execute(self, statement: str, params: Sequence[Any] | Mapping[str, Any] = (), *,
                commit: bool = False) -> PostgresCursor:
        """Run one statement; with `commit`, the transaction's NOTIFYs and COMMIT go in its message too (nothing
        may run after it in this transaction): the claim's lock is then held for no round trip of ours."""
        translated, returns_id, writes_jobs, writes_states = _statement(statement, self._overrides)
        self.wrote_jobs = self.wrote_jobs or writes_jobs
        self.wrote_states = self.wrote_states or writes_states
        cursor = psycopg.ClientCursor(self._raw)
        bound = _params(params)
        before = 0  # results ahead of the statement's own, in its message
        if self._pending:  # one message: BEGIN, the clock, the statement
            if self._now is not None:
                named = isinstance(bound, dict)
                bound = {**bound, _NOW: self._now} if named else [self._now, *bound]  # type: ignore[dict-item]
                translated = self._pending.format(now=f"%({_NOW})s" if named else "%s") + "; " + translated
            else:
                translated = f"{self._pending}; {translated}"
            before, self._pending = self._pending.count(";") + 1, ""
        if commit:
            if self.wrote_jobs and not self._notifies:
                self._notifies.append((WAKE_CHANNEL, ""))
            if isinstance(bound, dict):
                names = [f"{_NOW}_n{i}" for i in range(2 * len(self._notifies))]
                bound.update(zip(names, (v for pair in self._notifies for v in pair), strict=True))
                marks = [f"%({name})s" for name in names]
            else:
                bound += [v for pair in self._notifies for v in pair]
                marks = ["%s"] * (2 * len(self._notifies))
            translated += "".join(f"; SELECT pg_notify({a}, {b})" for a, b in zip(marks[::2], marks[1::2]))
            translated += f"; {_STATUS_NOTIFY}; COMMIT" if self.wrote_states else "; COMMIT"
            self._notifies, self.committed = [], True
        cursor.execute(translated, bound)
        for _ in range(before):
            cursor.nextset()
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
        self._notifies.append((channel, payload))

    def commit(self) -> None:
        """COMMIT, then the NOTIFYs in a transaction of their own, in the same message. A NOTIFY takes a
        cluster-wide lock from its transaction's commit until that commit returns (async.c), so a notifying
        transaction that flushes the WAL serializes every other notifier behind its flush: committed apart, with
        synchronous_commit = off (a lost wake-up delays claimers to their next poll), commits share their flushes
        again. The NOTIFYs go only if the COMMIT succeeded: the rest of a message is skipped after an error.
        The status feed's NOTIFY goes the same way, when the status triggers flagged the session (STATUS_FLAG)."""
        if self.committed:
            return
        parts = ["COMMIT"] if self.began else []
        if self._notifies or self.wrote_states:
            notifies = "".join([", pg_notify(%s, %s)"] * len(self._notifies))
            parts += ["BEGIN", f"SELECT set_config('synchronous_commit', 'off', true){notifies}",
                      *([_STATUS_NOTIFY] if self.wrote_states else []), "COMMIT"]
        self._pending, self.committed = "", True
        if not parts:
            return
        try:
            psycopg.ClientCursor(self._raw).execute("; ".join(parts), [v for pair in self._notifies for v in pair])
        except psycopg.Error:
            if not (self.began and self._raw.info.transaction_status == pq.TransactionStatus.INERROR):
                raise
            # The transaction committed; only its wake-up failed (a full NOTIFY queue): claimers still poll.
            log.warning("PostgreSQL queue: a wake-up NOTIFY failed after its transaction committed")
            self._raw.execute("ROLLBACK")

    def rollback(self) -> None:
        if self.began and not self.committed and not self._raw.broken:
            self._raw.execute("ROLLBACK")


_NO_OVERRIDES: Mapping[str, str] = {}
_NOW = "forgeci_now"  # the clock's name among a named statement's parameters
_STATEMENTS: dict[tuple[str, str | None], tuple[str, bool, bool, bool]] = {}  # translated once per statement text


def _statement(statement: str, overrides: Mapping[str, str]) -> tuple[str, bool, bool, bool]:
    """(what PostgreSQL runs, whether it returns the new row's id, whether it writes jobs, whether it writes jobs or
    pipelines) of a statement: its override (one statement), or its translation; an INSERT into an identity table
    without RETURNING returns its id."""
    override = overrides.get(statement)
    if (found := _STATEMENTS.get((statement, override))) is None:
        writes_jobs, writes_states = bool(_WRITES_JOBS.match(statement)), bool(_WRITES_STATES.match(statement))
        if override is not None:
            found = (override, False, writes_jobs, writes_states)
        else:
            translated, match = postgres(statement), _INSERT.match(statement)
            returns_id = bool(match and match.group(1) in IDENTITY_TABLES
                              and not re.search(r"\bRETURNING\b", statement, re.I))
            if returns_id:
                translated = translated.rstrip().rstrip(";") + " RETURNING id"
            found = (translated, returns_id, writes_jobs, writes_states)
        if len(_STATEMENTS) < 4096:  # the queue's statements are a few hundred; built ones (IN lists) vary
            _STATEMENTS[statement, override] = found
    return found


def _params(params: Sequence[Any] | Mapping[str, Any]) -> list[Any] | dict[str, Any]:
    """sqlite3 stores booleans as 0/1 in INTEGER columns; PostgreSQL's BIGINT refuses a boolean parameter."""
    if isinstance(params, Mapping):
        return {key: int(value) if isinstance(value, bool) else value for key, value in params.items()}
    return [int(value) if isinstance(value, bool) else value for value in params]


class PostgresDatabase:
    """The pool of one queue database. `transaction()` is the PostgreSQL counterpart of QueueBase._transaction."""

    def __init__(self, url: str, password: str | None = None, *, min_size: int = 1, max_size: int = 8,
                 timeout: float = 30.0, routines: Mapping[str, str] | None = None) -> None:
        self._conninfo = conninfo(url, password)
        # name -> the CREATE of a routine in pg_temp (a session's own), run on a connection before the first
        # transaction or call that asks for it.
        self._routines = dict(routines or {})
        self._ready: weakref.WeakKeyDictionary[psycopg.Connection[Any], set[str]] = weakref.WeakKeyDictionary()
        self._ready_lock = threading.Lock()
        self.name = _display(url)
        # check: a connection that broke while idle in the pool (a restarted server) is replaced, not handed out.
        self._pool = ConnectionPool(self._conninfo, min_size=min_size, max_size=max_size, timeout=timeout,
                                    open=False, configure=_configure, check=_check,
                                    # psycopg's own automatic PREPAREs off: after a ROLLBACK psycopg drops every
                                    # prepared statement of the session (DEALLOCATE ALL) once it holds one of its
                                    # own, and with them the queue's (_prepare), which it believes still there.
                                    kwargs={"autocommit": True, "prepare_threshold": None})
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
    def transaction(self, now: float | None = None, overrides: Mapping[str, str] | None = None,
                    snapshot: bool = False, prelude: Sequence[str] = (),
                    routines: Sequence[str] = ()) -> Iterator[PostgresConnection]:
        """One READ COMMITTED transaction (writers; the claim serializes itself), or with `snapshot` a REPEATABLE
        READ one (the readers of SQLite's plain BEGIN); a failure rolls back and surfaces as QueueError.
        `prelude`: SQL expressions (no placeholders, no `%`, no braces) evaluated in the message of BEGIN, in one
        SELECT with the clock (the claim's lock; set_config(..., true) for a setting of this transaction alone);
        `routines`: the names of the routines it calls."""
        # SQLite's plain BEGIN: every read of the transaction sees one state of the database.
        begin = "BEGIN ISOLATION LEVEL REPEATABLE READ" if snapshot else "BEGIN"
        try:
            with self._pool.connection() as raw:
                if routines:
                    self._create(raw, routines)
                conn = PostgresConnection(raw, overrides, begin, now, prelude)
                try:
                    yield conn
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()
        except psycopg.Error as exc:
            raise QueueError(f"PostgreSQL queue {self.name}: {_first_line(exc)}") from exc
        except PoolTimeout as exc:
            raise QueueError(f"PostgreSQL queue {self.name}: no connection ({exc})") from exc

    def call(self, statement: str, params: Sequence[Any], *, routines: Sequence[str] = ()) -> list[tuple[Any, ...]]:
        """One statement as its own transaction (autocommit: the call of a routine that makes its own transaction,
        runner.queue.postgres_queue), as a prepared statement: after its first call on a connection, one message
        of Bind and Execute. `routines`: the names of the routines it calls. Failures surface as QueueError, as
        transaction()'s do."""
        try:
            raw = self._pool.getconn()  # not connection(): an autocommit call has no transaction to end
            try:
                if routines:
                    self._create(raw, routines)
                cursor = raw.execute(statement, params, prepare=True)
                return cursor.fetchall() if cursor.pgresult and cursor.pgresult.status == pq.ExecStatus.TUPLES_OK \
                    else []
            finally:
                self._pool.putconn(raw)
        except psycopg.Error as exc:
            raise QueueError(f"PostgreSQL queue {self.name}: {_first_line(exc)}") from exc
        except PoolTimeout as exc:
            raise QueueError(f"PostgreSQL queue {self.name}: no connection ({exc})") from exc

    def _create(self, raw: psycopg.Connection[Any], names: Sequence[str]) -> None:
        ready = self._ready.get(raw)
        if ready is not None and ready.issuperset(names):
            return
        with self._ready_lock:
            ready = self._ready.setdefault(raw, set())
        for name in names:
            if name not in ready:  # outside any transaction: it outlives a rollback, so it runs once
                raw.execute(self._routines[name])
                ready.add(name)

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

    @property
    def conninfo(self) -> str:
        return self._conninfo

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
    conn.add_notice_handler(_log_warning)
    conn.execute("SET synchronous_commit = on")  # see the module's doc: a 202 means committed


def _log_warning(notice: psycopg.errors.Diagnostic) -> None:
    """A WARNING the server sent (forgeci_complete's failed wake-up); its NOTICEs (a routine created) are not news."""
    if notice.severity_nonlocalized == "WARNING":
        log.warning("%s", notice.message_primary)


def _check(conn: psycopg.Connection[Any]) -> None:
    """Before a pooled connection is handed out: ping it only if something arrived while it was idle — a server
    that shuts down or restarts sends its FATAL and closes the socket — instead of a round trip per transaction.
    A server that vanished without a word is found by the transaction's first statement, as by a ping."""
    if conn.closed or select.select([conn.fileno()], [], [], 0)[0]:
        ConnectionPool.check_connection(conn)


def _display(url: str) -> str:
    """The url without anything secret (a password in it is refused by the settings, but never echo one)."""
    return re.sub(r"//[^@/]*:[^@/]*@", "//***@", url)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
