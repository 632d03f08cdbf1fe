"""The PostgreSQL queue against bare psycopg doing the same transactions, in one run: `python bench/queue_postgres.py`
(bench/queue.py prints it as its PostgreSQL column).

A throwaway cluster (tests/postgres.py; Debian's postgresql from scripts/setup) with fsync on; `CLAIMERS` threads
claim and complete N jobs, each operation its own transaction. Bare is a two-column table with the durability
forgeci uses: the claim (a SKIP LOCKED UPDATE ... RETURNING) commits with synchronous_commit = off, the completion
(an UPDATE) with on; "bare, all synchronous" (both on) is printed beside it for reference, as the floor of a queue
that flushes every claim. Rounds alternate forgeci and bare, and the median round is reported.

Client and server share the machine's cores, so beside the rates it prints the CPU time a cycle costs each side
(median of the rounds): this process's (time.process_time) and the cluster's (its processes' utime + stime from
/proc, with the exited ones' through the postmaster's children times), both over the claimer threads' run alone.
CPU time is steadier than a rate on a machine that other work shares.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # as bench/queue.py: the repository heads sys.path

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import psycopg  # noqa: E402

from runner.models import JobSpec, JobState  # noqa: E402
from runner.queue.postgres_queue import PostgresQueue  # noqa: E402
from tests.postgres import USER, Cluster, pg_bin_dir  # noqa: E402

GOAL_RATIO = 0.5
GOAL_CYCLES = 2_000
CLAIMERS = 4
SPEC = JobSpec(repo="https://git.example.test/acme/app.git", ref="refs/heads/main", event="push",
               meta={"pusher": "ada", "message": "Fix the flaky test", "forge": "github"})
_BARE_CLAIM = ("UPDATE t SET state = 'running' WHERE id = (SELECT id FROM t WHERE state = 'queued' ORDER BY id "
               "LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id")


@dataclass(frozen=True)
class Cpu:
    """Milliseconds of CPU per cycle: this process's and the cluster's (None without /proc)."""

    client: float
    server: float | None

    def __str__(self) -> str:
        server = "?" if self.server is None else f"{self.server:.2f}"
        total = "" if self.server is None else f" = {self.client + self.server:.2f}"
        return f"{self.client:.2f} client + {server} server{total} ms"


@dataclass(frozen=True)
class Rates:
    """Claim + complete cycles per second, median of the rounds; CPU per cycle, median of the rounds."""

    forgeci: float
    bare: float
    bare_synchronous: float
    jobs: int
    rounds: int
    forgeci_cpu: Cpu | None = None
    bare_cpu: Cpu | None = None

    @property
    def ratio(self) -> float:
        return self.forgeci / self.bare

    @property
    def met(self) -> bool:
        return self.ratio >= GOAL_RATIO and self.forgeci >= GOAL_CYCLES


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_postmaster: int | None = None  # the measured cluster's (measure() sets it)
_spent: list[tuple[float, float | None]] = []  # (client, server) CPU seconds of each _threads run


def _cluster_cpu() -> float | None:
    """CPU seconds of the cluster: the postmaster's own and its exited children's, and its live children's."""
    postmaster, total = _postmaster, 0
    if postmaster is None:
        return None
    try:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile: counted in the postmaster's children times
            if int(entry) == postmaster:
                total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
            elif int(fields[1]) == postmaster:
                total += int(fields[11]) + int(fields[12])
    except OSError:
        return None
    return total / _TICK


def _threads(work: Callable[[str], int], n: int) -> float:
    """Run `n` claimers until the queue is empty; the seconds it took."""
    done: list[int] = []
    threads = [threading.Thread(target=lambda name=f"r{k}": done.append(work(name))) for k in range(n)]
    server, client = _cluster_cpu(), time.process_time()
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    after = _cluster_cpu()
    _spent.append((time.process_time() - client, None if server is None or after is None else after - server))
    return elapsed


def forgeci(url: str, jobs: int) -> float:
    with PostgresQueue(url, max_concurrent=CLAIMERS, pool_size=CLAIMERS) as q:
        for _ in range(jobs):
            q.enqueue(SPEC)

        def work(runner: str) -> int:
            count = 0
            while (job := q.claim(runner, 60)) is not None:
                q.complete(job.id, JobState.success, runner_id=runner)
                count += 1
            return count
        rate = jobs / _threads(work, CLAIMERS)
        assert q.active_counts() == (0, 0)  # every job was claimed and completed
        return rate


def bare(url: str, jobs: int, *, synchronous_claims: bool = False) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, state TEXT NOT NULL)")
        conn.execute("CREATE INDEX t_queued ON t (id) WHERE state = 'queued'")
        for _ in range(jobs):
            conn.execute("INSERT INTO t (state) VALUES ('queued')")
    claim = _BARE_CLAIM if synchronous_claims else \
        f"BEGIN; SET LOCAL synchronous_commit = off; {_BARE_CLAIM}; COMMIT"  # one message, as forgeci's claim

    def work(runner: str) -> int:
        count = 0
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET synchronous_commit = on")
            while True:
                cursor = conn.execute(claim)
                for _ in range(0 if synchronous_claims else 2):
                    cursor.nextset()  # past BEGIN and SET, to the UPDATE's rows
                row = cursor.fetchone()
                if row is None:
                    return count
                conn.execute("UPDATE t SET state = 'success' WHERE id = %s", row)
                count += 1
    return jobs / _threads(work, CLAIMERS)


def _cpu(spent: list[tuple[float, float | None]], jobs: int) -> Cpu:
    servers = [server for _, server in spent]
    return Cpu(statistics.median(client for client, _ in spent) * 1e3 / jobs,
               None if None in servers else statistics.median(servers) * 1e3 / jobs)  # type: ignore[type-var]


def measure(jobs: int, rounds: int) -> Rates | None:
    """Start a cluster, alternate the sides for `rounds` rounds; None without PostgreSQL's binaries."""
    global _postmaster
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        return None
    root = Path(tempfile.mkdtemp(prefix="forgeci-pg-bench-"))
    if os.geteuid() == 0:
        shutil.chown(root, USER, USER)
    cluster = Cluster(root, bin_dir, USER if os.geteuid() == 0 else os.environ.get("USER", ""))
    ours: list[float] = []
    theirs: list[float] = []
    theirs_sync: list[float] = []
    our_cpu: list[tuple[float, float | None]] = []
    their_cpu: list[tuple[float, float | None]] = []
    try:
        cluster.start(fsync=True)
        _postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
        for _ in range(rounds):
            ours.append(forgeci(cluster.new_database(), jobs))
            our_cpu.append(_spent.pop())
            theirs.append(bare(cluster.new_database(), jobs))
            their_cpu.append(_spent.pop())
            theirs_sync.append(bare(cluster.new_database(), jobs, synchronous_claims=True))
            _spent.clear()
    finally:
        _postmaster = None
        cluster.stop("fast")
        shutil.rmtree(root, ignore_errors=True)
    return Rates(statistics.median(ours), statistics.median(theirs), statistics.median(theirs_sync), jobs, rounds,
                 _cpu(our_cpu, jobs), _cpu(their_cpu, jobs))


def report(rates: Rates) -> str:
    return (f"PostgreSQL, claim + complete, {CLAIMERS} concurrent claimers, {rates.jobs:,} jobs, fsync on, median of "
            f"{rates.rounds} rounds:\n"
            f"  forgeci {rates.forgeci:,.0f}/s, bare psycopg {rates.bare:,.0f}/s, ratio {rates.ratio:.2f}x "
            f"(bare, all synchronous: {rates.bare_synchronous:,.0f}/s)\n"
            f"  CPU per cycle: forgeci {rates.forgeci_cpu}, bare {rates.bare_cpu}; load average "
            f"{os.getloadavg()[0]:.1f}\n"
            f"  goal: >= {GOAL_RATIO}x bare and >= {GOAL_CYCLES:,} cycles/s -> {'met' if rates.met else 'NOT met'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="the median round is reported")
    args = parser.parse_args()
    rates = measure(args.jobs, args.rounds)
    if rates is None:
        print("PostgreSQL binaries not found: run scripts/setup", file=sys.stderr)
        return 2
    print(report(rates))
    return 0  # a report, not a gate, as bench/queue.py: timings on a shared machine are too noisy to fail on


if __name__ == "__main__":
    sys.exit(main())
