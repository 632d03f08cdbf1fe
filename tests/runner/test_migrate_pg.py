"""`forgeci db migrate --to postgresql://...`: a SQLite queue with every table filled (the migration tests' seeds),
copied into a throwaway PostgreSQL database: the same rows in every table, sequences that continue, and the same
views through PostgresQueue; the refusals exit 2 with what to do."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runner.models import JobSpec, JobState
from runner.queue import Queue, schema
from runner.queue.migrate_pg import MigrateRefused, copy_to_postgres, source_tables
from runner.queue.postgres import IDENTITY_TABLES
from runner.queue.postgres_queue import PostgresQueue
from runner.runtime import DataDirLock
from tests.postgres import Cluster
from tests.runner.test_migrations import REPO, SHA, build

ROOT = Path(__file__).resolve().parents[2]
PASSWORD_ENV = "FORGECI_QUEUE_PASSWORD"


def full_database(path: Path) -> Path:
    """Today's schema with rows in every table (test_migrations' seeds), plus rows that a careless copy changes: a
    job whose runs_on a trigger derived (PostgreSQL's trigger would write it with other spacing), text with
    quotes, tabs, backslashes and non-ASCII (COPY's escapes), and ids far past the row count."""
    build(path, len(schema.MIGRATIONS))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(
        "INSERT INTO jobs (id, repo, ref, sha, event, priority, env, meta, state, queued_at, pipeline_id, name,"
        " error, pipeline) VALUES (900, ?, 'refs/heads/feature', ?, 'push', 3, '{\"A\": \"x\\ty\"}', '{}',"
        " 'failure', 1200.5, 7, 'lint', ?, ?)",
        (REPO, SHA, "it's \\N a\ttab,\nnewline, ünïcödé and \\ backslash",
         '{"runs_on": ["big", "linux"], "steps": []}'))
    conn.execute("INSERT INTO pipelines (id, repo, ref, event, spec, state, created_at, user, slug)"
                 " VALUES (4000, ?, 'refs/heads/main', 'manual', ?, 'success', 1300.25, 'ada', 'acme/app')",
                 (REPO, JobSpec(repo=REPO, ref="refs/heads/main", env={"Q": "it's"}).to_json()))
    conn.close()
    return path


def contents(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return sorted(rows, key=repr)


def sqlite_rows(db: Path, table: str, columns: list[str]) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return contents(conn.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall())
    finally:
        conn.close()


def pg_rows(url: str, table: str, columns: list[str]) -> list[tuple[Any, ...]]:
    quoted = ", ".join(f'"{c}"' for c in columns)
    with psycopg.connect(url) as conn:
        return contents(conn.execute(f"SELECT {quoted} FROM {table}").fetchall())


def columns_of(db: Path, table: str) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
    finally:
        conn.close()


@pytest.fixture
def migrated(tmp_path: Path, pg_url: str) -> tuple[Path, str, Any]:
    db = full_database(tmp_path / "queue.db")
    return db, pg_url, copy_to_postgres(db, pg_url)


def test_every_table_is_copied_row_for_row(migrated: tuple[Path, str, Any]) -> None:
    db, url, report = migrated
    conn = sqlite3.connect(db)
    tables = source_tables(conn)
    conn.close()
    # The list comes from the file: every table of today's schema, none of SQLite's own, each one filled.
    assert set(tables) >= {"jobs", "pipelines", "steps", "cache_entries", "snapshots", "artifacts", "artifact_files",
                           "deliveries", "schedules", "notifications", "agents", "agent_tokens", "usage", "job_caches",
                           "job_metrics"}
    assert [t.table for t in report.tables] == tables
    for count in report.tables:
        assert count.sqlite == count.postgres > 0, count
    for table in tables:
        columns = columns_of(db, table)
        assert pg_rows(url, table, columns) == sqlite_rows(db, table, columns), table
    assert "jobs" in report.table_text() and report.rows == sum(t.sqlite for t in report.tables)


def test_identity_sequences_continue_past_the_copied_ids(migrated: tuple[Path, str, Any]) -> None:
    db, url, report = migrated
    assert set(report.next_ids) >= IDENTITY_TABLES  # derived from the catalog: at least the queue's own list
    with psycopg.connect(url) as conn:
        for table in report.next_ids:
            column = "job_id" if table == "snapshots" else "id"
            top = conn.execute(f"SELECT max({column}) FROM {table}").fetchone()[0]
            taken = conn.execute("SELECT nextval(pg_get_serial_sequence(%s, %s))", (table, column)).fetchone()[0]
            assert taken == top + 1 == report.next_ids[table], table
        conn.rollback()
    with PostgresQueue(url) as queue:
        job_id = queue.enqueue(JobSpec(repo=REPO, ref="refs/heads/main"))
        pipeline_id = queue.create_pipeline(JobSpec(repo=REPO, ref="refs/heads/next"))
        assert job_id > 900 and pipeline_id > 4000
        assert queue.get(job_id).state is JobState.queued


def test_the_migrated_queue_shows_the_same_pipelines_jobs_and_index(migrated: tuple[Path, str, Any]) -> None:
    db, url, _ = migrated
    with Queue(db) as before, PostgresQueue(url) as after:
        assert after.list_pipelines(limit=100) == before.list_pipelines(limit=100)
        assert [after.pipeline(p) for p in (7, 4000)] == [before.pipeline(p) for p in (7, 4000)]
        assert after.pipeline_jobs(7) == before.pipeline_jobs(7)
        old_jobs, _ = before.list_jobs(limit=100)
        assert after.list_jobs(limit=100)[0] == old_jobs
        for job in old_jobs:
            assert after.get(job.id) == before.get(job.id)  # with its steps
        assert after.get(900).spec.pipeline["runs_on"] == ["big", "linux"]
        assert after.list_jobs(order="dispatch", limit=100) == before.list_jobs(order="dispatch", limit=100)
        assert after.cache_entry("acme/app/main/abc") == before.cache_entry("acme/app/main/abc")
        assert after.snapshot(2) == before.snapshot(2)
        assert after.artifacts_of(pipeline_id=7) == before.artifacts_of(pipeline_id=7)
        assert after.cache_results(10) == before.cache_results(10)
        assert after.schedules() == before.schedules()
        assert after.agents() == before.agents()
        assert after.agent_tokens() == before.agent_tokens()
        assert after.notifications_of(7) == before.notifications_of(7)
        assert after.usage_rows(0, 1e12) == before.usage_rows(0, 1e12)
        assert after.range_stats(0, 1e12) == before.range_stats(0, 1e12)
        # And it works on: the waiting job of pipeline 7 is claimed and finished on PostgreSQL.
        claimed = after.claim("r-pg", 60)
        assert claimed is not None and claimed.id == 3
        after.complete(3, JobState.success, runner_id="r-pg")
        assert after.get(3).state is JobState.success


def test_a_libpq_multi_host_url_reaches_the_writable_host(tmp_path: Path, pg_url: str) -> None:
    """The README's failover form: hosts in turn, the first that accepts writes (target_session_attrs)."""
    db = full_database(tmp_path / "queue.db")
    dead = tmp_path / "no-server-here"
    dead.mkdir()
    base, _, socket = pg_url.partition("?host=")
    url = f"{base}?host={dead},{socket}&target_session_attrs=read-write"
    report = copy_to_postgres(db, url)
    assert all(t.sqlite == t.postgres for t in report.tables)
    with PostgresQueue(url) as queue:
        assert queue.pipeline(7).job_ids == (10, 11, 900)


def test_the_job_logs_go_into_the_log_relays_table_too(tmp_path: Path, pg_url: str) -> None:
    """Coordinators on PostgreSQL read logs from the database (log_chunks): the files of the data dir go there too,
    in the files' own JSON Lines, so a coordinator without them shows them; a job the table has a log of already
    keeps it, and a file of a job the queue no longer holds is left out."""
    from runner.logs import read_log
    from runner.queue import migrate_pg

    db = full_database(tmp_path / "queue.db")
    logs = tmp_path / "logs"
    write_job_log(tmp_path, 2, ["failing", "it's failed: ünïcödé"])
    write_job_log(tmp_path, 1, [f"line {i}" for i in range(2500)])  # three chunks
    write_job_log(tmp_path, 31337, ["a job retention removed"])
    had = sqlite3.connect(db).execute("SELECT job_id, first_n, last_n, lines FROM log_chunks").fetchall()
    assert had, "the migration tests' seeds fill log_chunks too"
    write_job_log(tmp_path, had[0][0], ["not the stored log"])
    report = copy_to_postgres(db, pg_url, logs=logs)
    assert report.logs == (2, 2502)
    with psycopg.connect(pg_url) as conn:
        chunks = conn.execute("SELECT job_id, first_n, last_n, lines FROM log_chunks ORDER BY job_id, first_n").fetchall()
    assert [c[:3] for c in chunks if c[0] in (1, 2)] == [
        (1, 1, migrate_pg.CHUNK_LINES), (1, 1001, 2000), (1, 2001, 2500), (2, 1, 2)]
    assert sorted(c for c in chunks if c[0] not in (1, 2)) == sorted(had)  # copied as they were
    for job_id in (1, 2):
        stored = "".join(c[3] for c in chunks if c[0] == job_id)
        assert stored == (logs / f"{job_id}.log").read_text()
        assert [x.n for x in read_log(logs / f"{job_id}.log")] == list(range(1, stored.count("\n") + 1))


def test_a_target_with_rows_is_refused_and_left_as_it_was(tmp_path: Path, pg_url: str) -> None:
    db = full_database(tmp_path / "queue.db")
    with PostgresQueue(pg_url) as queue:
        kept = queue.enqueue(JobSpec(repo=REPO, ref="refs/heads/main"))
    with pytest.raises(MigrateRefused, match=r"already holds rows \(.*jobs \(1 rows\)"):
        copy_to_postgres(db, pg_url)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT id FROM jobs").fetchall() == [(kept,)]
        assert conn.execute("SELECT count(*) FROM pipelines").fetchone() == (0,)


def test_a_failed_copy_keeps_nothing(tmp_path: Path, pg_url: str) -> None:
    db = full_database(tmp_path / "queue.db")
    conn = sqlite3.connect(db)
    conn.execute("UPDATE usage SET seconds = 'a while'")  # SQLite keeps text in a REAL column; PostgreSQL will not
    conn.commit()
    conn.close()
    with pytest.raises(MigrateRefused, match=r"usage\.seconds: the value 'a while' does not fit"):
        copy_to_postgres(db, pg_url)
    with psycopg.connect(pg_url) as pg:
        assert pg.execute("SELECT count(*) FROM jobs").fetchone() == (0,)  # rolled back, jobs came first
    again = copy_to_postgres(full_database(tmp_path / "again.db"), pg_url)  # the target is still empty
    assert all(t.sqlite == t.postgres > 0 for t in again.tables)


def test_rows_whose_parent_is_gone_are_named_before_anything_is_written(tmp_path: Path, pg_url: str) -> None:
    db = full_database(tmp_path / "queue.db")
    conn = sqlite3.connect(db)  # foreign keys off, as a database written by hand (or an old bug) may be
    conn.execute("INSERT INTO steps (job_id, idx, name, state) VALUES (777, 0, 'lost', 'success')")
    conn.commit()
    conn.close()
    with pytest.raises(MigrateRefused, match=r"1 row\(s\) reference rows that do not exist \(steps -> jobs\)"):
        copy_to_postgres(db, pg_url)
    with psycopg.connect(pg_url) as pg:
        assert pg.execute("SELECT to_regclass('jobs')").fetchone() == (None,)  # not even the schema


def test_an_older_schema_is_refused_with_what_to_do(tmp_path: Path, pg_url: str) -> None:
    db = tmp_path / "queue.db"
    build(db, 5)
    with pytest.raises(MigrateRefused, match=rf"schema version 5, this forgeci's is {len(schema.MIGRATIONS)}: "
                                             r"start `forgeci serve` once"):
        copy_to_postgres(db, pg_url)


def migrate_cli(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "forgeci_cli", "--config", str(config), "db", "migrate", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, env={**os.environ, **(env or {})})


def settings_file(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    data.mkdir()
    full_database(data / "queue.db")
    config = tmp_path / "forgeci.toml"
    config.write_text(f'data_dir = "{data}"\n')
    return config, data


def test_the_command_copies_prints_the_counts_and_never_the_password(tmp_path: Path, pg_cluster: Cluster) -> None:
    url = pg_cluster.new_database()
    config, data = settings_file(tmp_path)
    secret = "pg-pass-w0rd-never-shown"  # the throwaway cluster trusts the socket: libpq sends it unasked for
    result = migrate_cli(config, "--to", url, env={PASSWORD_ENV: secret})
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    lines = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line[:1].isalpha()}
    assert lines["jobs"] == ["7", "7"] and lines["pipelines"] == ["2", "2"], result.stdout
    assert "the counts match" in result.stdout and "[queue] url" in result.stdout
    again = migrate_cli(config, "--to", url)  # the target has rows now
    assert again.returncode == 2 and "already holds rows" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize(("url", "message"), [
    ("mysql://ci@db/forgeci", "expected a postgresql://user@host/db url, got the scheme 'mysql'"),
    ("postgresql://ci:hunter2@db/forgeci", "must not hold a password"),
    ("postgresql://ci@db", "naming the user and the database"),
    ("postgresql://ci@db:5432,db2:x/forgeci", "a port is a number"),
])
def test_the_command_refuses_a_url_that_is_not_postgresql(tmp_path: Path, url: str, message: str) -> None:
    config, _ = settings_file(tmp_path)
    result = migrate_cli(config, "--to", url)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


def test_the_command_refuses_while_a_server_holds_the_data_dir(tmp_path: Path, pg_url: str) -> None:
    config, data = settings_file(tmp_path)
    lock = DataDirLock(data)
    lock.acquire()  # as forgeci serve does
    try:
        result = migrate_cli(config, "--to", pg_url)
    finally:
        lock.release()
    assert result.returncode == 2, result.stderr
    assert "already running on" in result.stderr and "copying a database a server is writing" in result.stderr
    with psycopg.connect(pg_url) as conn:  # not even the schema was made
        assert conn.execute("SELECT to_regclass('jobs')").fetchone() == (None,)


def test_the_command_refuses_an_old_schema_and_an_unreachable_server(tmp_path: Path, pg_url: str) -> None:
    config, data = settings_file(tmp_path)
    (data / "queue.db").unlink()
    build(data / "queue.db", 3)
    result = migrate_cli(config, "--to", pg_url)
    assert result.returncode == 2 and "start `forgeci serve` once" in result.stderr, result.stderr
    Queue(data / "queue.db").close()  # today's schema now
    nowhere = f"postgresql://ci@/forgeci?host={tmp_path}/no-socket-here&connect_timeout=2"
    result = migrate_cli(config, "--to", nowhere)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr



def write_job_log(data: Path, job_id: int, texts: list[str]) -> None:
    from runner.layout import DataLayout
    from runner.logs import LogLine

    path = DataLayout(data).log_file(job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(LogLine(n, 1001.0 + n, "test", "stdout", text).to_json() + "\n"
                            for n, text in enumerate(texts, start=1)))


async def served(settings: Any, paths: list[str]) -> dict[str, Any]:
    """What the whole app (create_app: the runtime forgeci serve runs, no workers) answers for `paths`."""
    from aiohttp.test_utils import TestClient, TestServer

    from bot.app import create_app
    from tests.fake_engine import FakeEngine

    answers: dict[str, Any] = {}
    app = create_app(settings, {}, workers=False, engine=FakeEngine())
    async with TestClient(TestServer(app)) as client:
        for path in paths:
            async with client.get(path) as response:
                assert response.status == 200, (path, await response.text())
                answers[path] = await (response.text() if "/logs" in path else response.json())
    return answers


async def test_the_served_api_on_the_migrated_database_shows_the_same_pipelines_jobs_and_logs(
        tmp_path: Path, pg_url: str, fake_settings: Any) -> None:
    import dataclasses

    data = fake_settings.data_dir
    data.mkdir(parents=True)
    db = full_database(data / "queue.db")
    write_job_log(data, 2, ["failing", "it's failed: ünïcödé"])
    write_job_log(data, 1, ["installed", "tests passed"])
    paths = ["/pipelines", "/pipelines/7", "/pipelines/4000", "/jobs?limit=100", "/jobs?order=dispatch",
             "/jobs/status?id=1", "/jobs/status?id=10", "/jobs/status?id=900", "/agents", "/schedules",
             "/jobs/logs?id=2&follow=false", "/jobs/logs?id=1&follow=false"]
    before = await served(fake_settings, paths)
    report = copy_to_postgres(db, pg_url, logs=data / "logs")  # as the command does
    assert all(t.sqlite == t.postgres for t in report.tables)
    on_postgres = dataclasses.replace(fake_settings, queue=dataclasses.replace(fake_settings.queue, url=pg_url))
    after = await served(on_postgres, paths)
    for path in paths:
        assert after[path] == before[path], path
    assert "tests passed" in after["/jobs/logs?id=1&follow=false"]
    assert [p["id"] for p in after["/pipelines"]["pipelines"]] == [4000, 7]
