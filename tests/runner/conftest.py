"""The runner tests that also run with the queue on PostgreSQL.

The modules below open their queue through `Queue(path)` (their own import) or the runtime (runner.backend's);
their tests that are not marked slow run a second time, `[postgres]`, with that name bound to a factory opening
runner.queue.postgres_queue.PostgresQueue on a fresh database of the throwaway cluster (tests/postgres.py), one per
path, so reopening a path reopens its database. The contract suite, the state machine and the multi-process tests
parametrize themselves (test_queue_contract.py ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

ON_POSTGRES = frozenset({
    "tests.runner.test_pipelines", "tests.runner.test_quotas", "tests.runner.test_scheduler",
    "tests.runner.test_retry", "tests.runner.test_control", "tests.runner.test_artifacts", "tests.runner.test_cache",
    "tests.runner.test_outbox", "tests.runner.test_labels", "tests.runner.test_cache_entries",
    "tests.runner.test_snapshot", "tests.runner.test_maintenance", "tests.runner.test_outage",
    "tests.runner.test_pipeline_races",
})


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    on_both_backends(metafunc, ON_POSTGRES)


def on_both_backends(metafunc: pytest.Metafunc, modules: frozenset[str]) -> None:
    """Parametrize the tests of `modules` that are not slow over `queue_backend` (tests/bot/conftest.py too).
    `queue_backend` is in every test's closure through the autouse fixture below, which is what makes the
    parameter reach it (a name only appended to `metafunc.fixturenames` is pruned again, and the test ran on
    SQLite twice)."""
    definition = metafunc.definition
    if (metafunc.module.__name__ in modules and definition.get_closest_marker("slow") is None
            and definition.get_closest_marker("sqlite_file") is None):
        metafunc.parametrize("queue_backend", ["sqlite", "postgres"])


@pytest.fixture
def queue_backend() -> str:
    return "sqlite"


@pytest.fixture(autouse=True)
def _queue_on_postgres(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, queue_backend: str) -> None:
    if queue_backend != "postgres":
        return
    import runner.backend
    from runner.queue.postgres_queue import PostgresQueue

    cluster = request.getfixturevalue("pg_cluster")
    urls: dict[str, str] = {}

    def open_queue(path: object = None, **options: Any) -> PostgresQueue:
        if str(path) not in urls:
            urls[str(path)] = cluster.new_database()
        return PostgresQueue(urls[str(path)], **options)

    factory: Callable[..., PostgresQueue] = open_queue
    monkeypatch.setattr(runner.backend, "Queue", factory)
    if hasattr(request.module, "Queue"):
        monkeypatch.setattr(request.module, "Queue", factory)
