"""Upgrades: a database of every earlier schema version, with rows in every table, opens in today's Queue intact."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.errors import QueueError
from runner.models import JobSpec, JobState
from runner.queue import Queue, schema
from runner.queue.migration import statements

REPO = "https://git.example.test/acme/app.git"
SHA = "a" * 40
ROOT = Path(__file__).resolve().parents[2]

# Rows for each table, written with the columns the table had when its migration was released (a later ALTER
# TABLE ADD COLUMN gives older rows its default). A new migration that adds a table adds its seed here: the test
# of the version after it fails while a table of the database it builds is empty.
Seed = Callable[[sqlite3.Connection], None]


def seed_v1(conn: sqlite3.Connection) -> None:
    jobs = [
        # id, state, attempts, runner, lease, started, finished, error, cache_hit, meta
        (1, "success", 1, "r1", None, 1001.0, 1010.0, None, 1, '{"pusher": "ada"}'),
        (2, "failure", 2, "r1", None, 1002.0, 1020.0, "step test exited 1", 0, "{}"),
        (3, "queued", 0, None, None, None, None, None, None, '{"delivery": "d-1"}'),
        (4, "running", 1, "r9", 1060.0, 1003.0, None, None, None, "{}"),
    ]
    for job_id, state, attempts, runner, lease, started, finished, error, hit, meta in jobs:
        conn.execute(
            "INSERT INTO jobs (id, repo, ref, sha, event, priority, concurrency_group, fork, pr_number, base_ref,"
            " pipeline, env, meta, state, seq, attempts, runner_id, lease_expires, cancel_requested, queued_at,"
            " started_at, finished_at, error, cache_hit) VALUES"
            " (?, ?, 'refs/heads/main', ?, 'push', 5, ?, 0, NULL, NULL, NULL, '{\"CI\": \"true\"}',"
            "  ?, ?, 0, ?, ?, ?, 0, 1000.0, ?, ?, ?, ?)",
            (job_id, REPO, SHA, "acme/app:main" if job_id < 3 else None, meta, state, attempts, runner, lease,
             started, finished, error, hit))
    for job_id, idx, name, state, code in [(1, 0, "install", "success", 0), (1, 1, "test", "success", 0),
                                           (2, 0, "test", "failure", 1), (4, 0, "build", "running", None)]:
        conn.execute("INSERT INTO steps (job_id, idx, name, state, exit_code, started_at, finished_at)"
                     " VALUES (?, ?, ?, ?, ?, 1001.0, ?)", (job_id, idx, name, state, code,
                                                            None if code is None else 1005.0))


def seed_v2(conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT INTO cache_entries (key, repo, scope, image, paths, object, size, checksum, created_at, last_used,"
        " hits) VALUES ('acme/app/main/abc', 'acme/app', 'main', 'localhost/forgeci-job:latest',"
        " '[\"node_modules\"]', 'caches/acme/app/main/abc-1.tar.zst', 1234, 'f00d', 1000.0, 1010.0, 3)")
    conn.execute(
        "INSERT INTO snapshots (job_id, key, sha, image, state, failed_step, failed_step_name, size, checksum,"
        " created_at) VALUES (2, 'snapshots/2/" + SHA + "/1020.tar.zst', ?, 'localhost/forgeci-job:latest',"
        " 'failure', 0, 'test', 999, 'beef', 1020.0)", (SHA,))


def seed_v3(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO deliveries (forge, delivery_id, job_ids, received_at)"
                 " VALUES ('github', 'd-1', '[3]', 1000.0)")


def seed_v4(conn: sqlite3.Connection) -> None:
    # The trigger writes the metrics row of a job that finishes under this schema, as it did in production.
    conn.execute("UPDATE jobs SET state = 'success', finished_at = 1030.0, runner_id = 'r9', lease_expires = NULL"
                 " WHERE id = 4")
    conn.execute("UPDATE steps SET state = 'success', exit_code = 0, finished_at = 1029.0 WHERE job_id = 4")
    conn.execute("INSERT INTO job_metrics (finished_at, job_id, state, duration, steps, step_times, cache_hit)"
                 " VALUES (1020.0, 2, 'failure', 18.0, 1, '[[\"test\", 4.0]]', 0)")


def seed_v5(conn: sqlite3.Connection) -> None:
    spec = JobSpec(repo=REPO, ref="refs/heads/feature", sha=SHA).to_json()
    conn.execute("INSERT INTO pipelines (id, repo, ref, sha, event, spec, state, concurrency_group, plan_attempts,"
                 " created_at, started_at) VALUES (7, ?, 'refs/heads/feature', ?, 'push', ?, 'running',"
                 " 'acme/app:feature', 1, 1100.0, 1101.0)", (REPO, SHA, spec))
    for job_id, name, state, needs, blocked in [(10, "build", "success", "[]", 0),
                                                (11, "test", "queued", '["build", "lint"]', 1)]:
        conn.execute(
            "INSERT INTO jobs (id, repo, ref, sha, event, priority, env, meta, state, attempts, queued_at,"
            " started_at, finished_at, pipeline_id, name, display, needs, condition, continue_on_error, fail_fast,"
            " max_parallel, blocked, outputs) VALUES (?, ?, 'refs/heads/feature', ?, 'push', 5, '{}', '{}', ?,"
            " ?, 1100.0, ?, ?, 7, ?, ?, ?, 'success', 0, 1, NULL, ?, ?)",
            (job_id, REPO, SHA, state, 1 if state == "success" else 0, 1101.0 if state == "success" else None,
             1110.0 if state == "success" else None, name, f"{name} (py3.11)", needs, blocked,
             '{"VERSION": "1.2.3"}' if state == "success" else None))
    conn.execute("INSERT INTO deliveries (forge, delivery_id, job_ids, received_at, pipeline_ids)"
                 " VALUES ('gitea', 'd-2', '[10, 11]', 1100.0, '[7]')")


def seed_v6(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO artifacts (id, job_id, pipeline_id, job, display, repo, scope, paths, object, size,"
                 " checksum, file_count, total_size, created_at, expires_at) VALUES (1, 10, 7, 'build',"
                 " 'build (py3.11)', 'acme-app', 'feature', '[\"dist/**\"]', 'artifacts/10.tar.zst', 100, ?, 1,"
                 " 300, 1110.0, 99999999999.0)", ("0" * 64,))
    conn.execute("INSERT INTO artifact_files (artifact_id, path, size, sha256) VALUES (1, 'dist/app', 300, ?)",
                 ("1" * 64,))


def seed_notifications(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO notifications (pipeline_id, target, kind, event, state, attempts, next_at, created_at)"
                 " VALUES (7, 'ops-slack', 'slack', 'failure', 'pending', 1, 1200.0, 1150.0)")


def seed_schedules(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO schedules (name, fingerprint, next_due, last_due, last_pipeline, updated_at)"
                 " VALUES ('nightly', 'f1', 1300.0, 1200.0, 7, 1200.0)")


def seed_job_caches(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO job_caches (job_id, attempt, name, key, result, restored_key, size, seconds, saved,"
                 " saved_size, save_seconds, at) VALUES (10, 1, 'node', 'acme/app/feature/abc', 'fallback',"
                 " 'acme/app/main/abc', 1234, 0.5, 'saved', 999, 0.25, 1105.0)")


def seed_usage(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO usage (job_id, attempt, pipeline_id, slug, user, runner, state, started_at, ended_at,"
                 " seconds, infra_retry) VALUES (10, 1, 7, 'acme/app', 'ada', 'r1', 'success', 1101.0, 1110.0, 9.0, 0)")


def seed_agent_tokens(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO agent_tokens (name, token_hash, created_at, revoked_at) VALUES ('build-01', ?, 1150.0,"
                 " NULL)", ("2" * 64,))


def seed_agents(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO agents (name, instance, labels, version, address, max_concurrent, first_seen, last_seen)"
                 " VALUES ('build-01', 'host-a', '[\"big\",\"linux\"]', '0.1.0', '10.0.0.5', 2, 1150.0, 1160.0)")


def seed_cluster(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO status_changes (job_id, pipeline_id, state, at, done_at) VALUES (10, 7, 'success', 1110.0,"
                 " NULL)")
    conn.execute("INSERT INTO log_chunks (job_id, first_n, last_n, lines) VALUES (10, 1, 1, ?)",
                 ('{"n":1,"t":1101.0,"s":"","o":"system","x":"hello"}\n',))


def seed_nothing(conn: sqlite3.Connection) -> None:
    """A version that changes PostgreSQL alone (the claim order's index, the status triggers): SQLite has nothing
    new to fill."""


def version_of_postgres(text: str) -> int:
    """The schema version whose PostgreSQL twin holds `text` (and whose SQLite script is empty)."""
    return next(n for n, script in enumerate(schema.MIGRATIONS, start=1)
                if not script.strip() and text in (getattr(script, "postgres", None) or ""))


def version_with(text: str) -> int:
    """The schema version whose SQLite script holds `text`."""
    return next(n for n, script in enumerate(schema.MIGRATIONS, start=1) if text in script)


def version_of(table: str) -> int:
    """The schema version that creates `table` (migrations may be reordered when branches merge)."""
    return next(n for n, script in enumerate(schema.MIGRATIONS, start=1) if f"CREATE TABLE {table} " in script)


SEEDS: dict[int, Seed] = {1: seed_v1, 2: seed_v2, 3: seed_v3, 4: seed_v4, 5: seed_v5, 6: seed_v6,
                          version_of("notifications"): seed_notifications, version_of("schedules"): seed_schedules,
                          version_of("job_caches"): seed_job_caches, version_of("usage"): seed_usage,
                          version_of("agent_tokens"): seed_agent_tokens, version_of("agents"): seed_agents,
                          version_of_postgres("jobs_active ON jobs (state DESC, priority DESC, seq, id)"): seed_nothing,
                          version_of("status_changes"): seed_cluster,
                          version_of("usage_by_end"): seed_nothing,  # usage in end order: its rows are seed_usage's
                          version_of_postgres("PERFORM set_config('forgeci.status_changed'"): seed_nothing,
                          version_with("WHERE (state = 'planning' OR state = 'queued'"): seed_nothing,  # an index
                          version_of_postgres("forgeci_job_changed"): seed_nothing}
# Columns a later migration drops on purpose (their rows are kept without them): usage's surrogate id, once usage
# became a b-tree keyed by end time, job and attempt.
DROPPED = {"usage": {"id"}}


def build(path: Path, version: int) -> None:
    """A database as forgeci left it at `version`: that version's migrations, then rows written with its SQL."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")  # as the queue runs it
    for number, script in enumerate(schema.MIGRATIONS[:version], start=1):
        for statement in statements(script):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {number}")
    for number in range(1, version + 1):
        if number in SEEDS:
            SEEDS[number](conn)
    conn.close()


def tables(conn: sqlite3.Connection) -> list[str]:
    return sorted(row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))


def contents(path: Path) -> dict[str, tuple[list[str], list[tuple[object, ...]]]]:
    """Every table's columns and rows (sorted): what a migration must keep."""
    conn = sqlite3.connect(path)
    try:
        found = {}
        for table in tables(conn):
            columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
            rows = conn.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
            found[table] = (columns, sorted(rows, key=repr))
        return found
    finally:
        conn.close()


EARLIER = range(1, len(schema.MIGRATIONS))  # every released version before today's


def test_every_version_has_a_seed() -> None:
    assert set(SEEDS) >= set(EARLIER), "a migration's tables need rows here (add seed_vN) before the next one ships"


@pytest.mark.parametrize("version", EARLIER)
def test_a_database_of_each_earlier_version_migrates_without_losing_a_row(tmp_path: Path, version: int) -> None:
    db = tmp_path / "queue.db"
    build(db, version)
    before = contents(db)
    empty = [table for table, (_, rows) in before.items() if not rows]
    assert not empty, f"version {version}: no seed rows in {empty}"

    with Queue(db, max_concurrent=4) as queue:
        assert queue._conn.execute("PRAGMA user_version").fetchone()[0] == len(schema.MIGRATIONS)
        assert queue._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    after = contents(db)
    for table, (columns, rows) in before.items():
        new_columns, new_rows = after[table]
        dropped = DROPPED.get(table, set())
        kept_columns = [c for c in columns if c not in dropped]
        assert set(kept_columns) <= set(new_columns), f"{table}: columns dropped"
        rows = sorted((tuple(v for c, v in zip(columns, row, strict=True) if c not in dropped) for row in rows), key=repr)
        at = [new_columns.index(c) for c in kept_columns]  # by name: a rebuilt table may order its columns anew
        kept = sorted((tuple(row[i] for i in at) for row in new_rows), key=repr)
        assert kept == rows, f"{table}: rows changed by the migration from version {version}"


@pytest.mark.parametrize("version", EARLIER)
def test_a_migrated_database_works_as_a_queue(tmp_path: Path, version: int) -> None:
    db = tmp_path / "queue.db"
    build(db, version)
    with Queue(db, max_concurrent=4) as queue:
        done = queue.get(1)
        assert (done.state, done.attempts, done.spec.meta, done.spec.env) == (
            JobState.success, 1, {"pusher": "ada"}, {"CI": "true"})
        assert [(s.name, s.state.value, s.exit_code) for s in done.steps] == [("install", "success", 0),
                                                                               ("test", "success", 0)]
        assert queue.get(2).error == "step test exited 1"
        # The job that was waiting is claimed and finished by today's code; later ids follow the old ones.
        claimed = queue.claim("r-new", 60)
        assert claimed is not None and claimed.id == 3 and claimed.spec.meta == {"delivery": "d-1"}
        queue.complete(3, JobState.success, runner_id="r-new")
        assert queue.get(3).state is JobState.success
        assert queue.enqueue(JobSpec(repo=REPO, ref="refs/heads/main")) > max(3, 11 if version >= 5 else 4)
        if version >= 2:
            assert queue.cache_entry("acme/app/main/abc").hits == 3
            snapshot = queue.snapshot(2)
            assert snapshot is not None and snapshot.failed_step_name == "test"
        # The metrics trigger, migrated or created, records the job just finished (and the old rows stay).
        stats = queue.range_stats(0.0, 1e12)
        assert stats.states["success"] >= 1
        if version >= 4:
            assert stats.states["failure"] == 1  # the row the old trigger-era database held for job 2
        if version >= version_of("usage"):  # the attempt usage held before it was rebuilt in end order, then job 3's
            rows = queue.usage_rows(0.0, 1e12)
            assert rows[0] == (10, 1, 7, "acme/app", "ada", "r1", "success", 1101.0, 1110.0, 9.0, 0)
            assert [(row[0], row[6]) for row in rows[1:]] == [(3, "success")]
        if version >= 5:
            pipeline = queue.pipeline(7)
            assert (pipeline.state.value, pipeline.job_ids) == ("running", (10, 11))
            waiting = queue.get(11)
            assert waiting.waiting and waiting.spec.ref == "refs/heads/feature"
    with Queue(db) as again:  # opening again applies nothing twice
        assert again._conn.execute("PRAGMA user_version").fetchone()[0] == len(schema.MIGRATIONS)


def test_the_newest_schema_opens_unchanged(tmp_path: Path) -> None:
    db = tmp_path / "queue.db"
    build(db, len(schema.MIGRATIONS))
    before = contents(db)
    Queue(db).close()
    assert contents(db) == before


def newer_database(tmp_path: Path) -> Path:
    db = tmp_path / "data" / "queue.db"
    db.parent.mkdir()
    Queue(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {len(schema.MIGRATIONS) + 1}")
    conn.close()
    return db


def test_a_database_newer_than_the_code_is_refused_with_what_to_do(tmp_path: Path) -> None:
    db = newer_database(tmp_path)
    known = len(schema.MIGRATIONS)
    with pytest.raises(QueueError) as refused:
        Queue(db)
    message = str(refused.value)
    assert f"{db} has schema version {known + 1}, newer than this forgeci knows ({known})" in message
    assert "forgeci db restore" in message
    # Refused before anything was written: the database still says it is the newer version.
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == known + 1


def test_db_migrate_refuses_a_newer_database_and_says_so(tmp_path: Path) -> None:
    db = newer_database(tmp_path)
    config = tmp_path / "forgeci.toml"
    config.write_text(f'data_dir = "{db.parent}"\n')
    result = subprocess.run([sys.executable, "-m", "forgeci_cli", "--config", str(config), "db", "migrate"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "newer than this forgeci knows" in result.stderr and "Traceback" not in result.stderr


def test_db_migrate_upgrades_an_old_database_and_keeps_a_copy(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    build(data / "queue.db", 1)
    config = tmp_path / "forgeci.toml"
    config.write_text(f'data_dir = "{data}"\n')
    run = [sys.executable, "-m", "forgeci_cli", "--config", str(config), "db", "migrate"]
    result = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"schema version 1 -> {len(schema.MIGRATIONS)}" in result.stdout
    copies = list(data.glob("queue.db.v1-*"))
    assert len(copies) == 1
    assert sqlite3.connect(copies[0]).execute("PRAGMA user_version").fetchone()[0] == 1
    assert json.loads(sqlite3.connect(data / "queue.db").execute(
        "SELECT meta FROM jobs WHERE id = 1").fetchone()[0]) == {"pusher": "ada"}
    again = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert again.returncode == 0 and "up to date" in again.stdout
