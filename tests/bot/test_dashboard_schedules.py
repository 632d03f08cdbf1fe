"""The overview's Schedules section: each schedule's cron, next due time and last pipeline, and its Run button."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

from config.schedules import ScheduleSpec
from config.settings import Settings
from tests.bot.api_helpers import api_client

MakeRepo = Callable[..., tuple[Path, str]]


async def test_the_overview_lists_schedules_and_runs_one(settings: Settings, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": '[[steps]]\nname = "n"\nrun = "n"\n'})
    nightly = ScheduleSpec(name="nightly", repo=str(repo), cron="0 3 * * *", timezone="Europe/Berlin")
    async with api_client(dataclasses.replace(settings, schedules=(nightly,))) as client:
        html = await (await client.get("/dashboard")).text()
        row = html[html.index('data-schedule="nightly"'):]
        row = row[:row.index("</tr>")]
        assert "<code>0 3 * * *</code>" in row and "Europe/Berlin" in row and "(in " in row and "–" in row
        csrf = re.search(r'name="csrf" value="([^"]+)"', html)
        assert csrf is not None
        forged = await client.post("/dashboard/schedules/nightly/run", data={"csrf": "0" * 32},
                                   allow_redirects=False)
        assert forged.status == 403
        response = await client.post("/dashboard/schedules/nightly/run", data={"csrf": csrf[1]},
                                     allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == "/dashboard/pipelines/1"
        fragment = await (await client.get("/dashboard/fragments/overview")).text()
        assert '<a href="/dashboard/pipelines/1">#1</a>' in fragment
        missing = await client.post("/dashboard/schedules/weekly/run", data={"csrf": csrf[1]},
                                    allow_redirects=False)
        assert missing.status == 404


async def test_no_section_without_schedules(settings: Settings) -> None:
    async with api_client(settings) as client:
        assert 'id="schedules"' not in await (await client.get("/dashboard")).text()
