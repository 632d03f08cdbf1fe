"""Fixtures for the client's tests: a respx-faked API holding a few jobs in every kind of state."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import respx

from runner.models import CacheEntry
from tests.client.fake_api import NOW, T0, FakeApi, make_job

APP = "https://github.com/acme/app.git"


def seed(api: FakeApi) -> None:
    """Six jobs in every kind of state, and the running one's log so far."""
    api.add(make_job(1, state="success", started_at=T0 + 10, finished_at=T0 + 52, attempts=1, cache_hit=True,
                     steps=(("install", "success", 0, T0 + 11, T0 + 30), ("test", "success", 0, T0 + 30, T0 + 52))))
    api.add(make_job(2, ref="refs/heads/feature/login", state="failure", started_at=T0 + 60, finished_at=T0 + 95,
                     attempts=1, cache_hit=False, error="step test failed with exit code 1",
                     steps=(("install", "success", 0, T0 + 61, T0 + 80), ("test", "failure", 1, T0 + 80, T0 + 95))))
    api.add(make_job(3, repo="https://github.com/acme/api.git", sha="feedfacefeedfacefeedfacefeedfacefeedface",
                     state="running", started_at=NOW - 30, attempts=1,
                     steps=(("install", "success", 0, NOW - 29, NOW - 20), ("test", "running", None, NOW - 20, None))))
    api.add(make_job(4, state="queued", priority=5, queued_at=NOW - 120))
    api.add(make_job(5, repo="https://github.com/acme/web.git", ref="refs/tags/v1.2.0", state="queued", priority=8,
                     queued_at=NOW - 60))
    api.add(make_job(6, state="cancelled", started_at=T0 + 100, finished_at=T0 + 104, attempts=1))
    api.log(3, "\x1b[1m$ npm ci\x1b[0m", "added 312 packages in 4s", stream="stdout")
    api.log(3, "step test", stream="system")
    api.log(3, "\x1b[32m✓\x1b[0m parses config", "\x1b[31m✗\x1b[0m talks to the forge")
    api.snapshots[2] = {"key": "snapshots/2.tar.zst", "size": 73_400_320, "created_at": T0 + 96}
    api.cache = [  # as runner.cache indexes them
        CacheEntry("acme/app/main/3f2a9c", APP, "main", "localhost/forgeci-job:latest", ("node_modules",),
                   "cache/acme/app/main/3f2a9c.tar.zst", 184_000_000, "0" * 64, T0, NOW - 300, 12).to_dict(),
        CacheEntry("acme/api/main/77aa01", "https://github.com/acme/api.git", "main", "localhost/forgeci-job:latest",
                   (".venv",), "cache/acme/api/main/77aa01.tar.zst", 52_400_000, "1" * 64, T0, NOW - 7200, 3).to_dict(),
    ]


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with respx.mock(assert_all_called=False) as router:
        fake = FakeApi(router)
        seed(fake)
        yield fake


# The commands' end-to-end tests run a live server on the fake engine, like tests/bot.
from tests.bot.conftest import settings, shared_dir  # noqa: E402,F401 - fixtures
