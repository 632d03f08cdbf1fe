"""Cluster singletons under PostgreSQL session advisory locks (runner/queue/leader.py): one holder at a time, and
another coordinator takes over when the holder's connection drops, its process is killed -9 or it hangs.

The take-over times are printed (the machine is shared and noisy: no timing assertion); each wait has a deadline
well past the documented bound, so a take-over that never happens fails."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from runner.queue.leader import Leadership, Singletons, singleton_key
from runner.queue.postgres import conninfo

ROOT = Path(__file__).resolve().parents[2]
LEASE = 1.5


class Counter:
    """What a singleton task saw: how many run at once (never more than one), and who ran."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.most = 0
        self.ran: list[str] = []

    def task(self, who: str):  # noqa: ANN201 - the Leadership's task factory
        async def run() -> None:
            self.running.add(who)
            self.most = max(self.most, len(self.running))
            self.ran.append(who)
            try:
                await asyncio.Event().wait()
            finally:
                self.running.discard(who)
        return run


async def until(predicate, timeout: float, what: str) -> float:  # noqa: ANN001
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def holder_pid(url: str, name: str) -> int | None:
    """The backend pid of the session that holds singleton `name`'s lock."""
    key = singleton_key(name)
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                           "((classid::bigint << 32) | objid::bigint) = %s", (key,)).fetchone()
    return row[0] if row else None


async def test_one_holder_runs_the_task_and_another_takes_over_when_its_session_ends(pg_url: str) -> None:
    counter = Counter()
    info = conninfo(pg_url)
    a = Leadership(info, "schedules", counter.task("a"), lease=LEASE)
    b = Leadership(info, "schedules", counter.task("b"), lease=LEASE)
    tasks = [asyncio.create_task(a.run()), asyncio.create_task(b.run())]
    try:
        await until(lambda: len(counter.running) == 1, 10, "one holder")
        await asyncio.sleep(LEASE)  # several tries of the other one: still one
        assert counter.most == 1 and len(counter.ran) == 1
        first = counter.ran[0]
        pid = holder_pid(pg_url, "schedules")
        assert pid is not None
        with psycopg.connect(pg_url, autocommit=True) as conn:  # the holder's connection drops
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        took = await until(lambda: counter.ran[-1] != first and len(counter.running) == 1, 4 * LEASE, "take-over")
        print(f"take-over after the holder's session ended: {took:.2f}s (lease {LEASE}s)")
        assert counter.most == 1  # the old holder stopped before (or as) the new one started
        assert (a if first == "a" else b).held.is_set() is False
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_singletons_of_different_names_are_independent_and_sqlite_runs_them_directly(pg_url: str) -> None:
    counter = Counter()
    one, two = Singletons(conninfo(pg_url), LEASE), Singletons(conninfo(pg_url), LEASE)
    for who, singletons in (("1", one), ("2", two)):
        singletons.start("maintenance", counter.task(f"maintenance-{who}"))
        singletons.start("notify", counter.task(f"notify-{who}"))
    try:
        await until(lambda: len(counter.running) == 2, 10, "both singletons held")
        assert {name.split("-")[0] for name in counter.running} == {"maintenance", "notify"}
        assert one.holds("maintenance") != two.holds("maintenance")
        with pytest.raises(ValueError, match="twice"):
            one.start("notify", counter.task("again"))
        holder = one if one.holds("notify") else two
        await holder.stop(("notify",))  # a stopping coordinator closes the connection: the other takes it
        await until(lambda: (two if holder is one else one).holds("notify"), 4 * LEASE, "notify moves")
    finally:
        await one.stop()
        await two.stop()
    local = Singletons(None)
    local.start("schedules", counter.task("sqlite"))
    await until(lambda: "sqlite" in counter.running, 2, "direct run")
    assert local.holds("schedules")
    await local.stop()
    assert "sqlite" not in counter.running


@pytest.fixture
def holders(pg_url: str) -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait(10)


class Lines:
    """The stdout lines of the holder processes, read by threads: (time, pid, word)."""

    def __init__(self, procs: list[subprocess.Popen[str]]) -> None:
        self.seen: list[tuple[float, int, str]] = []
        for proc in procs:
            threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            word, _, pid = line.strip().partition(" ")
            self.seen.append((time.monotonic(), int(pid or 0), word))

    def leaders(self) -> list[int]:
        return [pid for _, pid, word in self.seen if word == "LEADER"]


def start_holder(url: str, procs: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.cluster_node", "lock", url, "status", str(LEASE)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    procs.append(proc)
    return proc


async def test_kill_9_of_the_holding_process_moves_the_lock_within_a_lease(
        pg_url: str, holders: list[subprocess.Popen[str]]) -> None:
    start_holder(pg_url, holders)
    start_holder(pg_url, holders)
    lines = Lines(holders)
    await until(lambda: len(lines.leaders()) == 1, 20, "one leader process")
    await asyncio.sleep(LEASE)
    assert len(lines.leaders()) == 1
    leader = lines.leaders()[0]
    killed_at = time.monotonic()
    os.kill(leader, signal.SIGKILL)
    await until(lambda: len(lines.leaders()) == 2, 4 * LEASE, "the other process takes the lock")
    took = next(t for t, pid, word in lines.seen if word == "LEADER" and pid != leader) - killed_at
    print(f"take-over after kill -9 of the holder: {took:.2f}s (lease {LEASE}s, bound 2/3 lease = {LEASE * 2 / 3:.2f}s)")


async def test_a_hung_holder_loses_the_lock_and_stops_when_it_wakes(
        pg_url: str, holders: list[subprocess.Popen[str]]) -> None:
    start_holder(pg_url, holders)
    start_holder(pg_url, holders)
    lines = Lines(holders)
    await until(lambda: len(lines.leaders()) == 1, 20, "one leader process")
    leader = lines.leaders()[0]
    stopped_at = time.monotonic()
    os.kill(leader, signal.SIGSTOP)  # alive, socket open, but silent: only the idle_session_timeout ends it
    await until(lambda: len(lines.leaders()) == 2, 6 * LEASE, "the other process takes the lock")
    took = next(t for t, pid, word in lines.seen if word == "LEADER" and pid != leader) - stopped_at
    print(f"take-over from a SIGSTOPped holder: {took:.2f}s (bound 5/3 lease = {LEASE * 5 / 3:.2f}s)")
    os.kill(leader, signal.SIGCONT)
    await until(lambda: any(pid == leader and word == "STOPPED" for _, pid, word in lines.seen), 4 * LEASE,
                "the woken holder stops its task")
    woke = next(t for t, pid, word in lines.seen if pid == leader and word == "STOPPED")
    await asyncio.sleep(LEASE)
    # Woken, it may run what was due in the instant before its failed heartbeat (the singletons' own
    # transactions make that harmless), then it stops for good and does not take the lock back.
    late = [t for t, pid, word in lines.seen if pid == leader and word == "TICK" and t > stopped_at + took]
    print(f"ticks of the woken holder before it stopped: {len(late)}")
    assert all(t <= woke for t in late)
    assert len(lines.leaders()) == 2
    assert lines.seen[-1][1] != leader
