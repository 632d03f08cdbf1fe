"""tests/bot runs on the fake engine: no Podman and no Podman user (make test runs it with Podman hidden)."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import Settings


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    """Repositories and data dirs: with the fake engine, git runs as us, so a private folder does."""
    return tmp_path


@pytest.fixture
def settings(fake_settings: Settings) -> Settings:
    return fake_settings
