"""The e2e modules whose tests (those not marked slow) also run with the queue on PostgreSQL, as
tests/runner/conftest.py's ON_POSTGRES do: the agents' coordination on the fake engine (the agent API's leases,
tokens, index writes and log batches against a PostgreSQL coordinator)."""

from __future__ import annotations

import pytest

from tests.runner.conftest import _queue_on_postgres, on_both_backends, queue_backend

__all__ = ["_queue_on_postgres", "queue_backend"]  # fixtures

ON_POSTGRES = frozenset({"tests.e2e.test_agents_fake"})


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    on_both_backends(metafunc, ON_POSTGRES)
