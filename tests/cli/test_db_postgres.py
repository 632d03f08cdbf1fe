"""The commands that used the SQLite file, with the queue on PostgreSQL (`[queue] url`): file backups refuse
naming pg_dump, `db migrate` applies the schema, `forgeci maintenance` prunes there, the doctor checks the
database without migrating it, agent tokens land in it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psycopg

from config.settings import parse_settings
from runner.doctor import Context, Host, Status, check_database
from runner.models import JobSpec, JobState
from runner.queue import MIGRATIONS
from runner.queue.postgres_queue import PostgresQueue

DAY = 86400.0


def config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "forgeci.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n[queue]\nurl = "{url}"\n')
    return path


def forgeci(path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "forgeci_cli", "--config", str(path), *argv],
                          capture_output=True, text=True, timeout=120)


def version_of(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass('forgeci_schema') IS NOT NULL").fetchone()
        found = conn.execute("SELECT version FROM forgeci_schema").fetchone() if row and row[0] else None
    return int(found[0]) if found else 0


def test_file_backups_refuse_naming_pg_dump_and_migrate_applies_the_schema(tmp_path: Path, pg_url: str) -> None:
    path = config(tmp_path, pg_url)
    for argv, tool in ((("db", "backup", str(tmp_path / "copy.db")), "pg_dump"),
                       (("db", "restore", str(tmp_path / "copy.db")), "pg_restore")):
        result = forgeci(path, *argv)
        assert result.returncode == 2, result
        assert tool in result.stderr and "queue.url" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "copy.db").exists() and not (tmp_path / "data" / "queue.db").exists()
    assert version_of(pg_url) == 0  # refusing touched nothing

    first = forgeci(path, "db", "migrate")
    assert first.returncode == 0 and f"schema version 0 -> {len(MIGRATIONS)}" in first.stdout, first
    assert version_of(pg_url) == len(MIGRATIONS)
    again = forgeci(path, "db", "migrate")
    assert again.returncode == 0 and "up to date" in again.stdout, again


def test_maintenance_prunes_the_postgresql_queue(tmp_path: Path, pg_url: str) -> None:
    now = time.time()
    with PostgresQueue(pg_url, clock=lambda: now - 30 * DAY) as old:  # a job that ended a month ago
        gone = old.enqueue(JobSpec(repo="r", ref="main"))
        claimed = old.claim("r1", 60)
        assert claimed is not None and claimed.id == gone
        old.complete(gone, JobState.success, None, "r1")
    with PostgresQueue(pg_url) as queue:
        kept = queue.enqueue(JobSpec(repo="r", ref="main"))
    result = forgeci(config(tmp_path, pg_url), "maintenance")
    assert result.returncode == 0, result
    assert "1 job(s)" in result.stdout
    with PostgresQueue(pg_url) as queue:
        assert [job.id for job in queue.list_jobs()[0]] == [kept]


def test_the_doctor_checks_the_postgresql_queue_without_migrating_it(tmp_path: Path, pg_cluster: object,
                                                                     pg_url: str) -> None:
    def check(url: str) -> tuple[Status, str]:
        settings = parse_settings(f'data_dir = "{tmp_path}"\n[queue]\nurl = "{url}"\n', "t")
        [found] = check_database(Context(settings, {}, Host()))
        return found.status, found.detail

    status, detail = check(pg_url)
    assert status is Status.ok and "no forgeci tables yet" in detail, detail
    assert version_of(pg_url) == 0
    PostgresQueue(pg_url).close()  # migrates
    status, detail = check(pg_url)
    assert status is Status.ok and f"schema version {len(MIGRATIONS)}" in detail, detail
    status, detail = check(pg_url.rsplit("/", 1)[0] + "/no_such_database?" + pg_url.split("?", 1)[1])
    assert status is Status.fail and "no_such_database" in detail, detail


def test_agent_tokens_are_made_in_the_postgresql_queue(tmp_path: Path, pg_url: str) -> None:
    result = forgeci(config(tmp_path, pg_url), "agents", "token", "create", "builder")
    assert result.returncode == 0, result
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT name FROM agent_tokens").fetchall() == [("builder",)]
    assert not (tmp_path / "data" / "queue.db").exists()
