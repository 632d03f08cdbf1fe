"""Copy a SQLite queue database into PostgreSQL: `forgeci db migrate --to postgresql://...` (runner/db_migrate.py).

The tables come from the SQLite file itself (every table but SQLite's own), so a table a later migration adds is
copied without a change here. The target gets its schema from PostgresDatabase (the same migrations), then every
row with its own ids, in one transaction: parents before children (the foreign keys), COPY for speed, the tables'
user triggers off meanwhile (they derive what the source rows already hold, e.g. jobs.runs_on, and would rewrite
it), each identity sequence set past the largest id it holds (rows written with explicit ids leave it at 1, and
the next INSERT would collide), and the counts compared per table before the commit: a mismatch rolls it all back.
"""

from __future__ import annotations

import dataclasses
import graphlib
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import QueueError, RunnerError
from runner.queue.base import BUSY_TIMEOUT
from runner.queue.schema import MIGRATIONS

CONNECT_TIMEOUT = 10  # seconds
# The log relay's table (several coordinators read job logs from the database): when the schema has it, the job
# logs of the data dir go there too, so every coordinator shows them, not only the one whose data dir has the files.
LOG_TABLE, LOG_COLUMNS = "log_chunks", ("job_id", "first_n", "last_n", "lines")
CHUNK_LINES = 1000
BATCH = 5000  # source rows fetched at a time: memory stays flat whatever the history's size


class MigrateRefused(RunnerError):
    """The copy was not started (or was rolled back) for a reason the operator can act on: the message says it."""


@dataclass(frozen=True)
class TableCount:
    table: str
    sqlite: int
    postgres: int


@dataclass(frozen=True)
class CopyReport:
    target: str  # the url without a password
    tables: tuple[TableCount, ...]
    next_ids: dict[str, int]  # identity table -> the id its next INSERT gets
    logs: tuple[int, int] | None = None  # (job logs, lines) put into LOG_TABLE; None: the schema has no such table

    @property
    def rows(self) -> int:
        return sum(t.sqlite for t in self.tables)

    def table_text(self) -> str:
        width = max([len("table"), *(len(t.table) for t in self.tables)])
        lines = [f"{'table':<{width}}  {'sqlite':>9}  {'postgresql':>10}"]
        lines += [f"{t.table:<{width}}  {t.sqlite:>9}  {t.postgres:>10}" + ("" if t.sqlite == t.postgres else "  !")
                  for t in sorted(self.tables, key=lambda t: t.table)]
        return "\n".join(lines)


def check_url(url: str) -> str:
    """A postgresql:// url as `[queue] url` takes it (libpq's multi-host form too); a password in it is refused
    (it would end up in shell history and process lists): it comes from the variable queue.password_env names."""
    from config.settings import _queue_url  # the one check of the setting's url

    try:
        if _queue_url(url):
            return url
    except ValueError as exc:
        raise MigrateRefused(f"--to: {exc}") from None
    raise MigrateRefused("--to: expected a postgresql://user@host/db url")


def copy_to_postgres(db: Path, url: str, password: str | None = None, logs: Path | None = None) -> CopyReport:
    """Copy every table of the queue database `db` (a stopped instance's: the caller holds its data dir's lock)
    into the empty PostgreSQL database `url`; the counts per table, equal, or MigrateRefused and nothing kept.
    `logs`: the data dir's job logs, for LOG_TABLE when the schema has it."""
    check_url(url)
    source = _open_source(db)
    try:
        tables = source_tables(source)
        target = _open_target(url, password)
        try:
            return _copy(source, target, tables, logs)
        finally:
            target.close()
    finally:
        source.close()


def _open_target(url: str, password: str | None) -> Any:
    """The target, its schema made by the same migrations; a server that does not answer is named at once (the
    pool would keep trying for its whole timeout)."""
    import psycopg

    from runner.queue.postgres import PostgresDatabase, _display, _first_line, conninfo

    try:
        psycopg.connect(conninfo(url, password), connect_timeout=CONNECT_TIMEOUT).close()
    except psycopg.Error as exc:
        raise MigrateRefused(f"cannot connect to {_display(url)}: {_first_line(exc)}") from None
    try:
        return PostgresDatabase(url, password, max_size=1, timeout=CONNECT_TIMEOUT)
    except QueueError as exc:
        raise MigrateRefused(str(exc)) from exc


def _open_source(db: Path) -> sqlite3.Connection:
    if not db.is_file():
        raise MigrateRefused(f"no queue database at {db} (is this the server's host and settings file?)")
    try:
        conn = sqlite3.connect(db, timeout=BUSY_TIMEOUT, isolation_level=None)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        raise MigrateRefused(f"{db}: not a readable SQLite database: {exc}") from exc
    if version != len(MIGRATIONS):
        conn.close()
        how = ("start `forgeci serve` once (or run `forgeci db migrate`) with [queue] url = \"\" to bring it to "
               "this version first"
               if version < len(MIGRATIONS) else "it was written by a newer forgeci: migrate with that version")
        raise MigrateRefused(f"{db} has schema version {version}, this forgeci's is {len(MIGRATIONS)}: {how}")
    conn.execute("BEGIN")  # one snapshot for the whole copy (and its counts)
    broken = conn.execute("PRAGMA foreign_key_check").fetchall()
    if broken:
        conn.close()
        where = ", ".join(sorted({f"{row[0]} -> {row[2]}" for row in broken}))
        raise MigrateRefused(f"{db}: {len(broken)} row(s) reference rows that do not exist ({where}); PostgreSQL "
                             f"would refuse them: `PRAGMA foreign_key_check` lists them")
    return conn


def source_tables(conn: sqlite3.Connection) -> list[str]:
    """The queue's tables (SQLite's own, sqlite_*, left out), each after the tables its foreign keys reference."""
    names = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name")]
    order: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for name in names:
        parents = {row[2] for row in conn.execute(f"PRAGMA foreign_key_list({_quote(name)})")} - {name}
        order.add(name, *sorted(parents & set(names)))
    return list(order.static_order())


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({_quote(table)})")]


def _copy(source: sqlite3.Connection, target: Any, tables: list[str], logs: Path | None) -> CopyReport:
    import psycopg
    from psycopg import sql

    try:
        with target.transaction() as conn:
            raw = conn.raw
            types = _target_columns(raw)
            missing = [t for t in tables if t not in types]
            if missing:
                raise MigrateRefused(f"the PostgreSQL schema has no table {', '.join(missing)}: is it this "
                                     f"forgeci's (schema version {len(MIGRATIONS)})?")
            # No writer gets in between the emptiness check and the commit (a server started on the target waits).
            raw.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                sql.SQL(", ").join(sql.Identifier(t) for t in tables)))
            full = [f"{t} ({n} rows)" for t in tables if (n := _count(raw, t))]
            if full:
                raise MigrateRefused(f"{target.name} already holds rows ({', '.join(full)}): migrate into an empty "
                                     f"database (this copy never merges into or replaces one)")
            for table in tables:
                _copy_table(source, raw, table, types[table])
            next_ids = _reset_identities(raw, types)
            counts = tuple(TableCount(t, source.execute(f"SELECT count(*) FROM {_quote(t)}").fetchone()[0],
                                      _count(raw, t)) for t in tables)
            report = CopyReport(target.name, counts, next_ids)
            if any(t.sqlite != t.postgres for t in counts):
                raise MigrateRefused(f"the counts differ, nothing was kept:\n{report.table_text()}")
            if logs is not None and set(LOG_COLUMNS) <= set(types.get(LOG_TABLE, ())):
                report = dataclasses.replace(report, logs=_import_logs(raw, logs))
            return report
    except QueueError as exc:  # a PostgreSQL error the transaction reported (rolled back)
        raise MigrateRefused(f"copying into {target.name} failed, nothing was kept: {exc}") from exc
    except psycopg.Error as exc:
        raise MigrateRefused(f"copying into {target.name} failed, nothing was kept: {exc}") from exc


def _import_logs(raw: Any, folder: Path) -> tuple[int, int]:
    """Each job's log file (`N.log`, of a job the queue holds and whose log the table does not have yet) into
    LOG_TABLE, in chunks of consecutive lines as the relay writes them (JSON Lines, the file's own form); (logs,
    lines) imported."""
    from psycopg import sql

    from runner.logs import read_log

    files = lines = 0
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(LOG_TABLE), sql.SQL(", ").join(map(sql.Identifier, LOG_COLUMNS)))
    job_ids = [row[0] for row in raw.execute(  # read before the COPY, which holds the connection
        sql.SQL("SELECT id FROM jobs WHERE id NOT IN (SELECT job_id FROM {}) ORDER BY id").format(
            sql.Identifier(LOG_TABLE))).fetchall()]
    with raw.cursor() as cursor, cursor.copy(statement) as copy:
        for job_id in job_ids:
            found = list(read_log(folder / f"{job_id}.log"))
            for start in range(0, len(found), CHUNK_LINES):
                chunk = found[start:start + CHUNK_LINES]
                copy.write_row([job_id, chunk[0].n, chunk[-1].n, "".join(line.to_json() + "\n" for line in chunk)])
            files += bool(found)
            lines += len(found)
    return files, lines


def _target_columns(raw: Any) -> dict[str, dict[str, tuple[str, bool]]]:
    """table -> column -> (PostgreSQL type name, is an identity column), from the catalog."""
    found: dict[str, dict[str, tuple[str, bool]]] = {}
    for table, column, udt, identity in raw.execute(
            "SELECT table_name, column_name, udt_name, is_identity FROM information_schema.columns"
            " WHERE table_schema = current_schema()").fetchall():
        found.setdefault(table, {})[column] = (udt, identity == "YES")
    return found


def _count(raw: Any, table: str) -> int:
    from psycopg import sql

    return int(raw.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0])


def _copy_table(source: sqlite3.Connection, raw: Any, table: str, target: dict[str, tuple[str, bool]]) -> None:
    from psycopg import sql

    columns = _columns(source, table)
    absent = [c for c in columns if c not in target]
    if absent:
        raise MigrateRefused(f"the PostgreSQL table {table} has no column {', '.join(absent)}")
    converters = [_converter(target[c][0], table, c) for c in columns]
    names = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    raw.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER USER").format(sql.Identifier(table)))
    with raw.cursor() as cursor:
        with cursor.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(table), names)) as copy:
            copy.set_types([target[c][0] for c in columns])
            for row in _rows(source, table, columns):
                copy.write_row([convert(value) for convert, value in zip(converters, row, strict=True)])
    raw.execute(sql.SQL("ALTER TABLE {} ENABLE TRIGGER USER").format(sql.Identifier(table)))


def _rows(source: sqlite3.Connection, table: str, columns: list[str]) -> Iterator[tuple[Any, ...]]:
    cursor = source.execute(f"SELECT {', '.join(map(_quote, columns))} FROM {_quote(table)}")
    while batch := cursor.fetchmany(BATCH):
        yield from batch


_INTEGERS = frozenset({"int2", "int4", "int8"})
_FLOATS = frozenset({"float4", "float8", "numeric"})


def _converter(udt: str, table: str, column: str) -> Callable[[Any], Any]:
    """A SQLite value as the PostgreSQL column's type takes it (the schema's pairs: INTEGER -> BIGINT, REAL ->
    DOUBLE PRECISION, 0/1 -> boolean, BLOB -> bytea); a value that does not fit is refused by name."""
    def refuse(value: Any) -> Any:
        raise MigrateRefused(f"{table}.{column}: the value {value!r:.60} does not fit PostgreSQL's {udt}")

    def integer(value: Any) -> Any:
        if value is None or type(value) is int:
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return refuse(value)

    def floating(value: Any) -> Any:
        return float(value) if isinstance(value, (int, float)) else value if value is None else refuse(value)

    def boolean(value: Any) -> Any:
        return value if value is None else bool(value) if value in (0, 1) else refuse(value)

    def text(value: Any) -> Any:
        return value if value is None or isinstance(value, str) else str(value) \
            if isinstance(value, (int, float)) else refuse(value)

    def binary(value: Any) -> Any:
        return value if value is None or isinstance(value, bytes) else value.encode() \
            if isinstance(value, str) else refuse(value)

    if udt in _INTEGERS:
        return integer
    if udt in _FLOATS:
        return floating
    return {"bool": boolean, "bytea": binary}.get(udt, text)


def _reset_identities(raw: Any, types: dict[str, dict[str, tuple[str, bool]]]) -> dict[str, int]:
    """Each identity column's sequence continues after the largest id copied; the next id of each."""
    from psycopg import sql

    next_ids = {}
    for table in sorted(types):
        for column, (_, identity) in types[table].items():
            if not identity:
                continue
            top = raw.execute(sql.SQL("SELECT coalesce(max({}), 0) FROM {}").format(
                sql.Identifier(column), sql.Identifier(table))).fetchone()[0]
            # is_called = false: the next nextval() returns top + 1 itself.
            raw.execute("SELECT setval(pg_get_serial_sequence(%s, %s), %s, false)",
                        (sql.Identifier(table).as_string(raw), column, int(top) + 1))
            next_ids[table] = int(top) + 1
    return next_ids
