"""tests/bot runs on the fake engine: no Podman and no Podman user (make test runs it with Podman hidden)."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import Settings
from tests.runner.conftest import _queue_on_postgres, on_both_backends, queue_backend

__all__ = ["_queue_on_postgres", "queue_backend"]  # fixtures (tests/runner/conftest.py)

# Their tests run on SQLite and, a second time, on PostgreSQL (as tests/runner/conftest.py's ON_POSTGRES do).
ON_POSTGRES = frozenset({
    "tests.bot.test_webhook_deliveries", "tests.bot.test_metrics", "tests.bot.test_usage_api",
})


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    on_both_backends(metafunc, ON_POSTGRES)


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    """Repositories and data dirs: with the fake engine, git runs as us, so a private folder does."""
    return tmp_path


@pytest.fixture
def settings(fake_settings: Settings) -> Settings:
    return fake_settings
