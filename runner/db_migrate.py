"""`forgeci db migrate`: bring the queue database to this forgeci's schema (in place, keeping a copy), or with
`--to postgresql://...` copy a stopped SQLite installation's queue into an empty PostgreSQL database."""

from __future__ import annotations

import argparse
import os
import sys

from config.settings import env_value, load_settings
from runner.errors import InstanceLocked
from runner.layout import DataLayout

EXIT_OK, EXIT_USAGE = 0, 2  # client.exits' codes (the runner package does not import the client's)


def command(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    layout = DataLayout(settings.data_dir)
    if not getattr(args, "to", None):
        from runner import backup

        result = backup.migrate_database(layout)
        print(f"{layout.db}: schema version {result.after}, up to date" if result.copy is None else
              f"{layout.db}: schema version {result.before} -> {result.after}; the database as it was: {result.copy}")
        return EXIT_OK
    from runner.queue.migrate_pg import MigrateRefused, check_url, copy_to_postgres
    from runner.runtime import DataDirLock

    password = env_value(settings.queue.password_env, os.environ)  # never printed, never in the url
    lock = DataDirLock(layout.root)
    try:
        check_url(args.to)
        try:
            lock.acquire()  # held through the copy: no server may start on the data dir meanwhile
        except InstanceLocked as exc:
            raise MigrateRefused(f"{exc}: copying a database a server is writing would miss what it writes "
                                 f"meanwhile") from None
        except FileNotFoundError:
            raise MigrateRefused(f"no data dir at {layout.root} (is this the server's host and settings file?)") \
                from None
        try:
            report = copy_to_postgres(layout.db, args.to, password, logs=layout.logs)
        finally:
            lock.release()
    except MigrateRefused as exc:
        print(f"forgeci: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(report.table_text())
    print(f"copied {report.rows} rows of {len(report.tables)} tables from {layout.db} into {report.target}; "
          f"the counts match")
    if report.logs is not None:
        print(f"and {report.logs[0]} job logs ({report.logs[1]} lines) from {layout.logs} into the table the "
              f"coordinators read logs from; the files stay")
    print(f"next: set [queue] url = \"{report.target}\" (the password in ${settings.queue.password_env}) and start "
          f"forgeci serve; the job logs stay files in {layout.logs} and the store stays {settings.store_url}")
    return EXIT_OK
