"""The usage page in Chromium: bars as long as each repository's minutes, the daily series drawn, quota meters
filled to their use, nothing outside its card, and no script or CSP error."""

from __future__ import annotations

import dataclasses
import json
import time

from config.quotas import QuotaRule
from config.settings import Settings
from runner.models import JobSpec, JobState
from tests.bot.api_helpers import api_settings, live_server
from tests.bot.browser_helpers import chromium

__all__ = ["api_settings"]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_the_usage_page_draws_bars_a_daily_series_and_quota_meters(api_settings: Settings) -> None:
    settings = dataclasses.replace(api_settings, quotas=(QuotaRule("acme/*", max_running=2, minutes_per_month=120),))
    with live_server(settings) as server:
        queue = server.runtime.queue
        clock = Clock(time.time())
        queue._clock = clock
        for repo, minutes in (("https://h/acme/app.git", 60), ("https://h/acme/web.git", 15), ("https://h/o/x", 30)):
            job_id = queue.enqueue(JobSpec(repo=repo, ref="main"))
            assert queue.claim("r", 60) is not None
            clock.now += minutes * 60
            queue.complete(job_id, JobState.success, runner_id="r")
        async with chromium() as browser:
            page = await browser.new_page(width=1200)
            await page.goto(f"{server.url}/dashboard/usage")
            widths = await page.evaluate(
                "JSON.stringify([...document.querySelectorAll('.hbar')].map(b => [b.dataset.key,"
                " b.querySelector('.hbar-fill').getBoundingClientRect().width,"
                " b.querySelector('.hbar-track').getBoundingClientRect().width]))")
            bars = json.loads(widths)
            assert [key for key, _, _ in bars] == ["acme/app", "o/x", "acme/web"]
            (_, app, track), (_, other, _), (_, web, _) = bars
            assert abs(app - track) < 2 and abs(other / app - 0.5) < 0.02 and abs(web / app - 0.25) < 0.02, bars
            assert await page.evaluate("document.querySelectorAll('svg.daily rect.day').length") >= 1
            assert await page.evaluate(
                "Math.max(...[...document.querySelectorAll('svg.daily rect.day')].map(r => r.getBBox().height))") > 0
            meter = await page.evaluate(
                "JSON.stringify([...document.querySelectorAll('tr.quota .meter')].map(m =>"
                " m.querySelector('.fill').getBoundingClientRect().width / m.getBoundingClientRect().width))")
            running, minutes = json.loads(meter)
            assert running < 0.01 and abs(minutes - 75 / 120) < 0.02, meter  # 0 of 2 running, 75 of 120 minutes
            assert await page.evaluate(
                "[...document.querySelectorAll('.card')].every(c => c.scrollWidth <= c.clientWidth)")
            await page.screenshot("dashboard-usage")
            assert page.errors == []
