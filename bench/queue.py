"""Benchmark of runner.queue against bare SQLite transactions on the same file system: `python bench/queue.py`;
then its PostgreSQL column, the PostgreSQL queue against bare psycopg (bench/queue_postgres.py), in the same run."""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script, bench/ heads sys.path and this file would shadow the stdlib's `queue` module;
    # the repository root takes its place, which also makes `runner` importable without installing.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from runner.models import JobSpec, JobState  # noqa: E402
from runner.queue import BUSY_TIMEOUT, CACHE_KIB, Queue  # noqa: E402

GOAL_RATIO = 0.5
GOAL_CYCLES = 2_000


def specs(n: int) -> list[JobSpec]:
    """Webhook-like jobs: every priority, a few concurrency groups, the metadata a push carries."""
    return [
        JobSpec(
            repo="https://git.example.test/acme/app.git", ref=f"refs/heads/branch-{i % 50}", sha=f"{i:040x}",
            event="push", priority=i % 11, concurrency_group=f"acme/app:branch-{i % 50}",
            meta={"pusher": "ada", "message": "Fix the flaky test", "delivery": f"d-{i}", "forge": "github"},
        )
        for i in range(n)
    ]


def bare_connection(path: Path) -> sqlite3.Connection:
    """The queue's connection settings, on a table with nothing but a key and a state."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, state TEXT NOT NULL)")
    return conn


def transaction(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(sql, params)
    conn.execute("COMMIT")


def timed(work: Callable[[], None]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


@dataclass(frozen=True)
class Timings:
    """Seconds for n jobs of each operation, queue and bare."""

    enqueue: float
    bare_insert: float
    claim_complete: float
    bare_two_updates: float
    cycle: float
    bare_cycle: float


def measure(n: int, folder: Path, round_: int) -> Timings:
    jobs = specs(n)

    def db(name: str) -> Path:
        return folder / f"{name}-{round_}.db"

    bare = bare_connection(db("bare"))
    bare_insert = timed(lambda: [transaction(bare, "INSERT INTO t (state) VALUES (?)", ("queued",)) for _ in range(n)])
    ids = [row[0] for row in bare.execute("SELECT id FROM t")]

    def two_updates() -> None:
        for job_id in ids:
            transaction(bare, "UPDATE t SET state = ? WHERE id = ?", ("running", job_id))
            transaction(bare, "UPDATE t SET state = ? WHERE id = ?", ("success", job_id))

    bare_two_updates = timed(two_updates)
    bare.close()

    bare = bare_connection(db("bare-cycle"))

    def bare_cycles() -> None:
        for _ in range(n):
            transaction(bare, "INSERT INTO t (state) VALUES (?)", ("queued",))
            job_id = bare.execute("SELECT last_insert_rowid()").fetchone()[0]
            transaction(bare, "UPDATE t SET state = ? WHERE id = ?", ("running", job_id))
            transaction(bare, "UPDATE t SET state = ? WHERE id = ?", ("success", job_id))

    bare_cycle = timed(bare_cycles)
    bare.close()

    with Queue(db("queue"), max_concurrent=4) as queue:
        enqueue = timed(lambda: [queue.enqueue(spec) for spec in jobs])

        def claim_complete() -> None:
            while (job := queue.claim("bench", 60)) is not None:
                queue.complete(job.id, JobState.success, runner_id="bench")

        claim_complete_s = timed(claim_complete)
        assert queue.active_counts() == (0, 0)  # every job was claimed and completed

    with Queue(db("queue-cycle"), max_concurrent=4) as queue:

        def cycles() -> None:
            for spec in jobs:
                queue.enqueue(spec)
                job = queue.claim("bench", 60)
                assert job is not None
                queue.complete(job.id, JobState.success, runner_id="bench")

        cycle = timed(cycles)

    return Timings(enqueue, bare_insert, claim_complete_s, bare_two_updates, cycle, bare_cycle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="the median round is reported")
    parser.add_argument("--postgres-jobs", type=int, default=2000, help="jobs of the PostgreSQL column; 0 skips it")
    args = parser.parse_args(argv)
    n = args.jobs

    with tempfile.TemporaryDirectory(prefix="forgeci-bench-") as tmp:
        rounds = [measure(n, Path(tmp), r) for r in range(args.rounds)]

    def rate(field: str) -> float:
        return n / statistics.median(getattr(t, field) for t in rounds)

    rows = [
        ("enqueue", "1 INSERT", rate("enqueue"), rate("bare_insert")),
        ("claim + complete", "2 UPDATEs", rate("claim_complete"), rate("bare_two_updates")),
        ("enqueue-claim-complete cycle", "1 INSERT + 2 UPDATEs", rate("cycle"), rate("bare_cycle")),
    ]
    print(f"forgeci queue benchmark: {n:,} jobs, SQLite {sqlite3.sqlite_version}, WAL, synchronous=NORMAL,"
          f" database on disk; median of {args.rounds} rounds")
    print("bare = the same transactions (each its own BEGIN IMMEDIATE) on a two-column table, same pragmas\n")
    print(f"{'operation':<30} {'queue jobs/s':>13} {'bare jobs/s':>12} {'ratio':>7}   bare transactions per job")
    for name, per_job, queue_rate, bare_rate in rows:
        print(f"{name:<30} {queue_rate:>13,.0f} {bare_rate:>12,.0f} {queue_rate / bare_rate:>6.2f}x   {per_job}")
    cycles = rows[2][2]
    met = all(q / b >= GOAL_RATIO for _, _, q, b in rows) and cycles >= GOAL_CYCLES
    print(f"\ngoal: >= {GOAL_RATIO}x bare and >= {GOAL_CYCLES:,} cycles/s -> {'met' if met else 'NOT met'}")
    if args.postgres_jobs:
        from bench import queue_postgres  # psycopg and a throwaway cluster: only when asked for

        rates = queue_postgres.measure(args.postgres_jobs, args.rounds)
        print("\n" + (queue_postgres.report(rates) if rates else "PostgreSQL: not measured (no PostgreSQL binaries: "
                                                                 "run scripts/setup)"))
    return 0  # a report, not a gate: timings on a shared machine are too noisy to fail a build on


if __name__ == "__main__":
    raise SystemExit(main())
