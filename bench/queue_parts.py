"""Where bench/queue.py's full cycle goes: the queue's calls (with its checkpointer thread, and with SQLite's inline
autocheckpoint instead), its SQL alone, its SQL without triggers, and bare SQLite with and without the inline WAL
checkpoint: `python bench/queue_parts.py`.

Wall time and the thread's CPU time per cycle (median of interleaved rounds). CPU time is the steadier figure on
a shared machine: the wall time adds the waits for the disk (the checkpoint's fsync) and for the CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # as bench/queue.py: not the stdlib's `queue`

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

from bench.queue import bare_connection, specs, transaction  # noqa: E402
from runner.models import JobState  # noqa: E402
from runner.queue import Queue  # noqa: E402
from runner.queue import jobs as sql  # noqa: E402
from runner.queue.base import AUTOCHECKPOINT, CHECKPOINT_EVERY  # noqa: E402

META = '{"pusher": "ada", "message": "Fix the flaky test", "delivery": "d-1", "forge": "github"}'


def calls(path: Path, n: int, thread: bool = True) -> None:
    """The three calls; without `thread`, the queue's connection checkpoints inline as SQLite does by default."""
    with Queue(path, max_concurrent=4) as queue:
        if not thread and queue._checkpointer is not None:
            queue._checkpointer.stop()
            queue._checkpointer = None
            queue._conn.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT}")
        for spec in specs(n):
            queue.enqueue(spec)
            job = queue.claim("bench", 60)
            assert job is not None
            queue.complete(job.id, JobState.success, runner_id="bench")


def statements(path: Path, n: int, triggers: bool = True) -> None:
    """The statements the three calls run, bound as they bind them, without the Python around them."""
    with Queue(path, max_concurrent=4) as queue:
        conn = queue._conn
        if not triggers:
            for trigger in ("temp.forgeci_usage", "job_metrics_on_finish", "jobs_runs_on"):
                conn.execute(f"DROP TRIGGER {trigger}")
        claim = {"runner": "bench", "lease": 60, "max": 4, "quota": None, "labels": "[]"}
        for i in range(n):
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            job_id = conn.execute(sql.ENQUEUE, (
                "https://git.example.test/acme/app.git", "refs/heads/b", f"{i:040x}", "push", i % 11,
                f"acme/app:branch-{i % 50}", 0, None, None, None, "{}", META, now, "acme/app", "ada")).lastrowid
            conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(sql._CLAIM, {**claim, "now": now}).fetchone()
            conn.execute(sql._TAKE, {"id": job_id, "runner": "bench", "lease": 60, "now": now})
            conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(sql._COMPLETE, {"id": job_id, "state": "success", "error": None, "runner": "bench",
                                         "now": now, "outputs": None})
            conn.execute("SELECT pipeline_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
            conn.execute("COMMIT")
            for _ in range(3):  # the three commits, counted as _Transaction counts them for the checkpointer
                queue._writes += 1
                if queue._writes >= CHECKPOINT_EVERY:
                    queue._wake_checkpointer()


def bare(path: Path, n: int, checkpoint: bool = True) -> None:
    conn = bare_connection(path)
    if not checkpoint:
        conn.execute("PRAGMA wal_autocheckpoint = 0")
    for _ in range(n):
        transaction(conn, "INSERT INTO t (state) VALUES (?)", ("queued",))
        job_id = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        transaction(conn, "UPDATE t SET state = ? WHERE id = ?", ("running", job_id))
        transaction(conn, "UPDATE t SET state = ? WHERE id = ?", ("success", job_id))
    conn.close()


CASES: dict[str, Callable[[Path, int], None]] = {
    "queue calls": calls,
    "queue calls, inline checkpoint": lambda path, n: calls(path, n, thread=False),
    "their SQL alone": statements,
    "their SQL, no triggers": lambda path, n: statements(path, n, triggers=False),
    "bare": bare,
    "bare, no checkpoint": lambda path, n: bare(path, n, checkpoint=False),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    found: dict[str, list[tuple[float, float]]] = {name: [] for name in CASES}
    with tempfile.TemporaryDirectory(prefix="forgeci-bench-") as tmp:
        for round_ in range(args.rounds):
            for i, (name, case) in enumerate(CASES.items()):
                wall, cpu = time.perf_counter(), time.thread_time()
                case(Path(tmp) / f"{i}-{round_}.db", args.jobs)
                found[name].append((time.perf_counter() - wall, time.thread_time() - cpu))

    def per_cycle(name: str, index: int) -> float:
        return statistics.median(t[index] for t in found[name]) / args.jobs * 1e6

    print(f"µs per enqueue-claim-complete cycle, {args.jobs:,} cycles, median of {args.rounds} interleaved rounds\n")
    print(f"{'':30} {'wall':>8} {'cpu':>8}   bare/this (wall, cpu)")
    for name in CASES:
        wall, cpu = per_cycle(name, 0), per_cycle(name, 1)
        print(f"{name:30} {wall:8.1f} {cpu:8.1f}   {per_cycle('bare', 0) / wall:.2f}x {per_cycle('bare', 1) / cpu:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
