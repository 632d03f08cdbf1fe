"""A throwaway PostgreSQL cluster for the tests: initdb in a temporary folder, a unix socket in it, pg_ctl stop.

Started once per test session (a few seconds) and only by tests that ask for it; each test gets a database of
its own (`pg_url`). As root the cluster runs as the unprivileged `forgeci` user (PostgreSQL refuses root). With no
PostgreSQL binaries the fixture fails naming scripts/setup, which installs Debian's `postgresql`.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

SETUP = "PostgreSQL server binaries not found (initdb, pg_ctl): run scripts/setup, which installs Debian's postgresql"
USER = os.environ.get("FORGECI_PODMAN_USER", "forgeci")


def pg_bin_dir() -> Path | None:
    """Debian keeps initdb and pg_ctl out of PATH, in /usr/lib/postgresql/VERSION/bin (the newest wins)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path and shutil.which("pg_ctl") else None


class Cluster:
    """One running cluster; `url(db)` is a libpq url over its socket."""

    def __init__(self, root: Path, bin_dir: Path, user: str) -> None:
        self.root, self.bin_dir, self.user = root, bin_dir, user
        self.data, self.socket = root / "data", root
        self._names = itertools.count(1)

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        # As root, the user switch is subprocess's own (setuid in the child), not runuser: scripts/test hides
        # runuser from tests/bot and tests/client so that they cannot reach Podman, and PostgreSQL needs no Podman.
        switch: dict[str, object] = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam(self.user)
            switch = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [],
                      "env": {**os.environ, "HOME": entry.pw_dir, "USER": self.user, "LOGNAME": self.user}}
        result = subprocess.run(argv, capture_output=True, text=True, cwd="/", timeout=120, **switch)  # type: ignore[call-overload]
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({result.returncode}): {result.stderr or result.stdout}")
        return result

    def start(self, *, fsync: bool = False, settings: dict[str, str] | None = None) -> None:
        """initdb and start; `settings`: more server settings (-c name=value)."""
        self.fsync, self.settings = fsync, dict(settings or {})
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user,
                  "-E", "UTF8", "--locale=C", "--no-sync")
        self._start()

    def _start(self) -> None:
        # No TCP; fsync off: a throwaway cluster trades durability for speed (forgeci's own connections still set
        # synchronous_commit, which the tests check).
        options = (f"-k {self.socket} -c listen_addresses='' -c fsync={'on' if getattr(self, 'fsync', False) else 'off'}"
                   " -c max_connections=200" + "".join(f" -c {k}={v}" for k, v in getattr(self, "settings", {}).items()))
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w",
                  "-t", "60", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """Stop (fast: open connections are cut) and start again; the server's output goes to the log, so no
        pipe of ours stays open in it."""
        self.stop("fast")
        self._start()

    def crash(self) -> None:
        """PostgreSQL's crash: `pg_ctl stop -m immediate` kills every server process at once (what was only in
        shared memory, such as WAL not yet written, is gone; the next start replays the WAL), then start again."""
        self.stop("immediate")
        self._start()

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """PostgreSQL away for the body of the `with` (a fast stop: every connection is cut), then started again
        on the same data and socket, as a restarted server or a failover would be."""
        self.stop("fast")
        try:
            yield
        finally:
            self._start()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@/{database}?host={self.socket}"

    def new_database(self) -> str:
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)


def raw_sql(queue: Any, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """A statement (SQLite's dialect) on the queue's own database, whichever backend it is on: what a test reads
    or changes behind the queue's back (a table's rows, a trigger)."""
    database = getattr(queue, "_db", None)
    if database is not None:  # PostgresQueue: translated like the queue's own statements
        with database.transaction() as conn:
            return conn.execute(statement, params).fetchall()
    return queue._conn.execute(statement, params).fetchall()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    yield from start_cluster()


def start_cluster(**settings: str) -> Iterator[Cluster]:
    """A cluster of its own in a temporary folder (the session's `pg_cluster`, `own_pg_cluster`, or a
    `throwaway_cluster`); `settings`: server settings (-c name=value)."""
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        pytest.fail(SETUP, pytrace=False)
    user = USER if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(user)
        except KeyError:
            pytest.fail(f"user {user} missing (PostgreSQL does not run as root): run scripts/setup", pytrace=False)
    root = Path(tempfile.mkdtemp(prefix="forgeci-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, user, user)
    cluster = Cluster(root, bin_dir, user)
    try:
        cluster.start(settings=settings)
        yield cluster
    finally:
        try:
            cluster.stop("immediate")
        except RuntimeError:
            pass  # never started (the failure is the test's), or already stopped
        shutil.rmtree(root, ignore_errors=True)


throwaway_cluster = contextlib.contextmanager(start_cluster)  # `with throwaway_cluster(name=value) as cluster:`


@pytest.fixture
def own_pg_cluster() -> Iterator[Cluster]:
    """A cluster for one test that stops or restarts it (`cluster.stopped()`, `cluster.restart()`), so the
    session's cluster, which the other tests share, never goes away under them."""
    yield from start_cluster()


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    """A fresh, empty database of the session's cluster."""
    return pg_cluster.new_database()
