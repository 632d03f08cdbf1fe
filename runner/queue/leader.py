"""Cluster-wide singletons: each runs on exactly one coordinator at a time, under a PostgreSQL session advisory lock.

Several `forgeci serve` processes on one PostgreSQL queue each answer webhooks, the API and agents, but some work
must happen once: maintenance, the schedules, lease expiry, the notifications outbox and commit-status posting. Each
is a `Leadership`: a connection of its own that tries `pg_try_advisory_lock(key)` every `lease / 3` seconds and,
while it holds the lock, runs the singleton's task; when the connection fails, the task is cancelled and the lock
is tried for again.

How fast another coordinator takes over (the bound, with `lease` = `queue.lease_seconds`):
- the holder dies (kill -9, OOM): its socket closes, PostgreSQL ends the session and releases the lock at once;
  another coordinator takes it at its next try (within lease / 3) and starts the task one heartbeat interval
  later (lease / 3): within 2/3 of a lease.
- the holder hangs (SIGSTOP, a stuck event loop) or its host or network goes away: it stops sending heartbeats
  (every lease / 3), and the session's `idle_session_timeout = lease` makes PostgreSQL end it lease seconds after
  the last one; another runs it within lease + 2/3 lease. The TCP keepalives and `tcp_user_timeout` below make
  the holder's own side notice a dead network within about a lease too.
- the holder's side: a heartbeat that fails or takes longer than lease / 3 cancels its task, so a cut-off holder
  stops at most 2/3 of a lease after its last good heartbeat, before the server lets anyone else in; a session
  ended under a live holder (pg_terminate_backend, a restarted server) is noticed at its next heartbeat, and the
  new holder waits that interval before it starts. Only a holder frozen past its lease (SIGSTOP) may, when it
  wakes, run one step of its task before its failed heartbeat stops it.
Every singleton's writes are also safe on their own (a schedule's due time is claimed with its pipeline in one
transaction, an outbox row is pushed on before it is sent): the lock keeps the work in one place, the
transactions keep a late step of a holder that was just cut off from doing harm twice.

On SQLite there is one coordinator (the data dir's lock guarantees it): `Singletons` without a conninfo runs every
task directly.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

log = logging.getLogger(__name__)

LOCK_SPACE = 0x666F  # high 16 bits of every singleton's lock key ("fo"): apart from the queue's own advisory locks
GRACE = 0.1  # seconds past a heartbeat interval a new holder waits before it starts the task (see _lead)
RESTART = 1.0  # seconds before a singleton's task that failed is started again (while the lock is still held)

Task = Callable[[], Awaitable[Any]]


def singleton_key(name: str) -> int:
    """The advisory lock key of a singleton: stable across versions and processes (a crc of its name)."""
    return (LOCK_SPACE << 32) | zlib.crc32(name.encode())


def connect_options(lease: float) -> dict[str, Any]:
    """libpq options for a lock's connection: a dead peer is noticed within about a lease (TCP only; a unix socket
    breaks at once when its peer dies)."""
    beat = max(1, int(lease / 3))
    return {"autocommit": True, "connect_timeout": max(2, beat), "keepalives": 1, "keepalives_idle": beat,
            "keepalives_interval": beat, "keepalives_count": 3, "tcp_user_timeout": int(lease * 1000)}


class Leadership:
    """One singleton on one coordinator: hold the lock, run `task` while held, stop it when the lock is lost."""

    def __init__(self, conninfo: str, name: str, task: Task, *, lease: float = 15.0) -> None:
        if lease < 0.3:
            raise ValueError("lease must be at least 0.3 s")
        self.conninfo, self.name, self.task, self.lease = conninfo, name, task, lease
        self.key = singleton_key(name)
        self.beat = lease / 3
        self.held = asyncio.Event()  # set while this coordinator holds the lock and runs the task
        self.terms = 0  # how many times it took the lock (tests, logs)

    async def run(self) -> None:
        """Forever: connect, try the lock until taken, run the task while the lock holds; again after a failure."""
        while True:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await psycopg.AsyncConnection.connect(self.conninfo, **connect_options(self.lease))
                await self._set_timeout(conn)
                await conn.execute("SET application_name = 'forgeci lock " + self.name.replace("'", "") + "'")
                while not await self._try(conn):
                    await asyncio.sleep(self.beat)
                await self._lead(conn)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                if self.held.is_set():
                    log.warning("%s: lost the cluster lock (%s); stopped here", self.name, _first_line(exc))
                else:
                    log.info("%s: cannot try the cluster lock: %s", self.name, _first_line(exc))
            finally:
                self.held.clear()
                if conn is not None:
                    await _close(conn)
            await asyncio.sleep(self.beat)

    async def _set_timeout(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """The server ends a session idle for a lease: a holder that stops beating loses the lock then. PostgreSQL
        before 14 lacks the setting: the lock still moves when a holder dies, but a hung one keeps it."""
        try:
            await conn.execute(f"SET idle_session_timeout = {int(self.lease * 1000)}")
        except psycopg.errors.UndefinedObject:
            log.warning("%s: this PostgreSQL has no idle_session_timeout (version 14+): a hung coordinator keeps "
                        "the cluster lock until its connection breaks", self.name)

    async def _try(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        cursor = await asyncio.wait_for(conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)), self.beat)
        row = await cursor.fetchone()
        return bool(row and row[0])

    async def _lead(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Run the task while heartbeats on the lock's connection succeed; cancel it as soon as one fails."""
        # A holder whose session ended under it (terminated, or its connection cut while it lives) notices at its
        # next heartbeat, at most one interval away: wait that long (checking our own connection), so the two never
        # run at once.
        await asyncio.sleep(self.beat + GRACE)
        await asyncio.wait_for(conn.execute("SELECT 1"), self.beat)
        self.terms += 1
        self.held.set()
        log.info("%s: this coordinator holds the cluster lock; running it here", self.name)
        task = asyncio.create_task(self._keep_running(), name=f"forgeci-singleton-{self.name}")
        try:
            while True:
                await asyncio.wait({task}, timeout=self.beat)
                await asyncio.wait_for(conn.execute("SELECT 1"), self.beat)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _keep_running(self) -> None:
        """The task, started again after a failure; a task that returns (nothing to do) leaves the lock held."""
        while True:
            try:
                await self.task()
                await asyncio.Event().wait()  # done: keep the lock, so no other coordinator starts it again
            except Exception:
                log.exception("%s failed; starting it again in %.0fs", self.name, RESTART)
                await asyncio.sleep(RESTART)


class Singletons:
    """The cluster singletons of one coordinator: under a Leadership each on PostgreSQL (`conninfo`), directly on
    SQLite (None)."""

    def __init__(self, conninfo: str | None, lease: float = 15.0) -> None:
        self.conninfo, self.lease = conninfo, lease
        self.leaderships: dict[str, Leadership] = {}
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    def start(self, name: str, task: Task) -> None:
        if name in self._tasks:
            raise ValueError(f"singleton {name} started twice")
        if self.conninfo is None:
            self._tasks[name] = asyncio.create_task(_run_direct(task), name=f"forgeci-{name}")
            return
        leadership = Leadership(self.conninfo, name, task, lease=self.lease)
        self.leaderships[name] = leadership
        self._tasks[name] = asyncio.create_task(leadership.run(), name=f"forgeci-lock-{name}")

    def holds(self, name: str) -> bool:
        """Whether this coordinator runs singleton `name` now (always, on SQLite, once started)."""
        if name not in self._tasks:
            return False
        leadership = self.leaderships.get(name)
        return leadership is None or leadership.held.is_set()

    async def stop(self, names: tuple[str, ...] | None = None) -> None:
        """Cancel the singletons (closing their connections releases their locks for another coordinator)."""
        chosen = [name for name in self._tasks if names is None or name in names]
        tasks = [self._tasks.pop(name) for name in chosen]
        for name in chosen:
            self.leaderships.pop(name, None)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _run_direct(task: Task) -> None:
    await task()


async def _close(conn: psycopg.AsyncConnection[Any]) -> None:
    try:
        await asyncio.wait_for(conn.close(), 2.0)
    except (psycopg.Error, OSError, TimeoutError):
        pass


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
