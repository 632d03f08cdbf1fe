"""What a migration is: its SQLite script, its PostgreSQL twin where the translation is not enough, and how a
script splits into statements. The chain itself is runner.queue.schema.MIGRATIONS."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator


class Migration(str):
    """A migration whose PostgreSQL DDL is not the mechanical translation of its SQLite text (runner.queue.dialect):
    the string is the SQLite script, unchanged; `postgres` is the same version written for PostgreSQL."""

    postgres: str | None
    postgres_after: str

    def __new__(cls, sqlite: str, *, postgres: str | None = None, postgres_after: str = "") -> Migration:
        migration = super().__new__(cls, sqlite)
        migration.postgres, migration.postgres_after = postgres, postgres_after
        return migration


def postgres_script(migration: str) -> str:
    """A migration as PostgreSQL runs it: its own text, else its SQLite text translated (and `postgres_after`:
    what only PostgreSQL needs, such as the triggers SQLite installs per connection)."""
    from runner.queue.dialect import postgres_ddl

    if isinstance(migration, Migration):
        return migration.postgres or postgres_ddl(migration) + "\n" + migration.postgres_after
    return postgres_ddl(migration)


def statements(script: str) -> Iterator[str]:
    """Split a migration script into statements (a ';' inside a string or trigger body does not end one)."""
    statement = ""
    for part in script.split(";"):
        statement += part + ";"
        if sqlite3.complete_statement(statement):
            if statement.strip(" \t\n;"):
                yield statement
            statement = ""
    if statement.strip(" \t\n;"):
        raise ValueError(f"incomplete SQL statement in a migration: {statement!r}")
