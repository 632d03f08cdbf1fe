"""`forgeci db ...` when the queue is on PostgreSQL (`[queue] url`): what the file commands become there.

`db backup` and `db restore` copy and replace the SQLite file; a PostgreSQL database is backed up by the tools
made for it (pg_dump / pg_restore for a copy, base backups and WAL archiving for point-in-time recovery), which
forgeci does not wrap: the command says so and exits 2. `db migrate` applies the migrations the database lacks
(in one transaction, under an advisory lock, as `forgeci serve` does at start); it keeps no copy: take a pg_dump
first.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from config.settings import Settings
from runner.backend import postgres_schema, queue_password, refuse_on_postgres
from runner.queue import MIGRATIONS


def db_command(action: str, settings: Settings, environ: Mapping[str, str] = os.environ) -> int:
    """Run `forgeci db ACTION` on the PostgreSQL queue; 0, or a ConfigError (exit 2) for the file commands."""
    if action in ("backup", "restore"):
        refuse_on_postgres(settings, f"forgeci db {action}")
    from runner.queue.postgres import PostgresDatabase, _display

    name = _display(settings.queue.url)
    before = postgres_schema(settings, environ)[0]
    with PostgresDatabase(settings.queue.url, queue_password(settings, environ), max_size=1) as database:
        after = database.version()  # migrated as it opened
    if before == after:
        print(f"{name}: schema version {after}, up to date")
    else:
        print(f"{name}: schema version {before} -> {after} (of {len(MIGRATIONS)})")
    return 0
