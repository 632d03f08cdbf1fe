"""The job screen says each cache entry of a job of several: which hit, which fell back (from what), which missed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from tests.client.fake_api import FakeApi
from tests.tui.conftest import wait_until
from tests.tui.test_job_screen import head, open_job
from tui.app import ForgeciApp


async def test_the_job_screen_lists_each_cache_entry(make_app: Callable[..., ForgeciApp], api: FakeApi) -> None:
    api.jobs[2] = dataclasses.replace(api.jobs[2], cache_hit=False, cache="some")
    api.caches[2] = [{"name": "node", "key": "k1", "result": "hit", "restored_key": "k1", "size": 10, "seconds": 1},
                     {"name": "pip", "key": "k2", "result": "miss", "restored_key": None, "size": 0, "seconds": 0}]
    app = make_app()
    async with app.run_test(size=(120, 24)) as pilot:
        screen = await open_job(app, pilot, 2)
        await wait_until(pilot, lambda: screen.job is not None and "node" in head(screen))
        assert "cache some hit (node hit, pip miss)" in head(screen)
