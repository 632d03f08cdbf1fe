"""The dashboard's server-rendered pages: numbers, chart, job page with steps and coloured log, escaping."""

from __future__ import annotations

import re

import pytest

from bot.dashboard import ansi
from bot.dashboard.views import MAX_LOG_LINES
from config.settings import Settings
from runner.models import JobState
from tests.bot.api_helpers import api_client, api_settings, enqueue, finish, runtime_of, write_log

__all__ = ["api_settings"]


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


async def test_the_overview_shows_the_four_numbers_chart_and_live_lists(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        queue = runtime_of(client).queue
        for state in ("success", "success", "success", "failure"):
            finish(queue, enqueue(queue), state)
        running = enqueue(queue, ref="feature/live")
        queued = enqueue(queue, ref="feature/waiting")
        queue.claim("test-runner", 60)
        response = await client.get("/dashboard")
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/html")
        html = await response.text()
        text = text_of(html)
        assert re.search(r'id="stat-jobs">4<', html) and re.search(r'id="stat-success">75\.0%<', html)
        assert "Average duration" in text and "Cache hit rate" in text
        assert html.count("<svg") == 1 and html.count('class="bar ok"') >= 1 and 'class="bar fail"' in html
        assert "feature/live" in text and "feature/waiting" in text
        assert f'href="/dashboard/jobs/{running}"' in html and f'href="/dashboard/jobs/{queued}"' in html
        assert '<script src="/dashboard/static/live.js' in html and 'data-live-src=' in html
        assert "Content-Security-Policy" in response.headers


@pytest.mark.parametrize("range_name", ["hour", "day", "week"])
async def test_the_range_switch(api_settings: Settings, range_name: str) -> None:
    async with api_client(api_settings) as client:
        html = await (await client.get(f"/dashboard?range={range_name}")).text()
        assert re.search(rf'href="/dashboard\?range={range_name}" class="on"', html)
        assert f"No job finished in the last {range_name}" in html
        fragment = await (await client.get(f"/dashboard/fragments/overview?range={range_name}")).text()
        assert "<html" not in fragment and 'id="stat-jobs"' in fragment
    async with api_client(api_settings) as client:
        response = await client.get("/dashboard?range=year", allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == "/dashboard"


async def test_the_job_page_shows_steps_cache_and_the_log_with_colours_escaped(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        runtime = runtime_of(client)
        job_id = enqueue(runtime.queue, sha="d" * 40)
        log = write_log(runtime, job_id, ["\x1b[1;32mPASS\x1b[0m all good", "<script>alert(1)</script> & more"])
        log.close()
        claimed = runtime.queue.claim("test-runner", 60)
        assert claimed is not None
        runtime.queue.set_cache_hit(job_id, True)
        for index, (name, state) in enumerate((("install", "success"), ("test", "failure"))):
            runtime.queue.start_step(job_id, index, name)
            runtime.queue.finish_step(job_id, index, state, 0 if state == "success" else 2)
        runtime.queue.complete(job_id, JobState.failure, "step test exited 2", runner_id="test-runner")
        html = await (await client.get(f"/dashboard/jobs/{job_id}")).text()
        text = text_of(html)
        assert f"Job #{job_id}" in text and "failure" in text and "step test exited 2" in text
        assert "install" in text and "test" in text and "dddddddddddd" in text
        assert 'class="pill ok">hit<' in html
        assert '<span class="a-fg2 a-b">PASS</span> all good' in html
        assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html
        assert 'id="retry"' in html and 'id="retry-failed"' in html and 'id="cancel"' not in html
        assert 'data-follow="no"' in html
        raw = await (await client.get(f"/dashboard/jobs/{job_id}/log.txt")).text()
        assert raw == "PASS all good\n<script>alert(1)</script> & more\n"


async def test_a_running_jobs_page_follows_and_offers_cancel(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        runtime = runtime_of(client)
        job_id = enqueue(runtime.queue)
        runtime.queue.claim("test-runner", 60)
        log = write_log(runtime, job_id, ["one", "two"])
        html = await (await client.get(f"/dashboard/jobs/{job_id}")).text()
        assert 'data-follow="yes"' in html and 'data-after="2"' in html and 'id="cancel"' in html
        log.close()


async def test_a_long_log_shows_its_tail_and_links_the_rest(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        runtime = runtime_of(client)
        job_id = enqueue(runtime.queue)
        write_log(runtime, job_id, [f"row {i}" for i in range(MAX_LOG_LINES + 10)]).close()
        finish(runtime.queue, job_id)
        html = await (await client.get(f"/dashboard/jobs/{job_id}")).text()
        assert "10 earlier lines" in html and 'id="L11"' in html and 'id="L10"' not in html


async def test_unknown_jobs_and_bad_paths(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        response = await client.get("/dashboard/jobs/424242")
        assert response.status == 404 and "Job not found" in await response.text()
        for path in ("/dashboard/jobs/abc", "/dashboard/jobs/-1", f"/dashboard/jobs/{2**70}"):
            assert (await client.get(path)).status == 404
        response = await client.get("/", allow_redirects=False)
        assert response.status == 302 and response.headers["Location"] == "/dashboard"
        assert (await client.get("/dashboard/static/style.css")).status == 200


@pytest.mark.parametrize(("text", "html"), [
    ("plain <b>", "plain &lt;b&gt;"),
    ("\x1b[31mred\x1b[0m plain", '<span class="a-fg1">red</span> plain'),
    ("\x1b[1;94mbright\x1b[22m thin", '<span class="a-fg12 a-b">bright</span><span class="a-fg12"> thin</span>'),
    ("\x1b[38;5;208mo\x1b[48;2;1;2;3mx", '<span style="color:#ff8700">o</span>'
                                        '<span style="color:#ff8700;background-color:#010203">x</span>'),
    ("\x1b[2K\x1b[1Gprogress 50%\r", "progress 50%\r"),
    ("\x1b]0;title\x07after", "after"),
    ("\x1b[38;5mbroken\x1b[m", "broken"),
])
def test_ansi_to_html(text: str, html: str) -> None:
    assert ansi.to_html(text)[0] == html


def test_ansi_strip() -> None:
    assert ansi.strip("\x1b[1m\x1b[32mok\x1b[0m \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\") == "ok link"
