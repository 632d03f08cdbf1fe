"""The dashboard in headless Chromium: no console errors, live numbers and log lines, working buttons, sign-in."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from config.settings import Settings
from runner.layout import DataLayout
from runner.models import JobSpec, JobState, PipelineState, SnapshotRecord
from runner.queue import Queue
from tests.bot.api_helpers import TOKEN, api_settings, enqueue, finish, live_server, with_server
from tests.fake_engine import FakeEngine, Script
from tests.bot.browser_helpers import chromium
from tests.bot.dashboard_helpers import DBS, EIGHT_TOML, PYTHONS, make_pipeline, run

pytestmark = [pytest.mark.slow]
__all__ = ["api_settings"]

MakeRepo = Callable[..., tuple[Path, str]]
TICKER = "ticker"  # on the fake engine: coloured ticks 0.3 s apart until it is stopped
TICKS = Script(lines=[f"\033[32mtick\033[0m {i}" for i in range(1, 1001)], interval=0.3, hang=True)


async def wait(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_overview_job_page_live_log_and_cancel(settings: Settings, make_repo: MakeRepo) -> None:
    repo, sha = make_repo({"README": "demo\n"})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with Queue(DataLayout(settings.data_dir).db) as history:  # finished jobs for the numbers, before workers run
        for state in ("success", "success", "failure"):
            finish(history, enqueue(history, repo="https://git.example.test/acme/old.git"), state)
    engine = FakeEngine()
    engine.expect("echo preparing", Script(lines=["preparing"]))
    engine.expect(TICKER, TICKS)
    with live_server(settings, workers=True, engine=engine) as server:
        queue = server.runtime.queue
        async with chromium() as browser:
            page = await browser.new_page()
            await page.goto(f"{server.url}/dashboard")
            jobs = await page.evaluate("document.getElementById('stat-jobs').textContent")
            assert int(jobs) == queue.range_stats(time.time() - 86400, time.time() + 1).total
            await page.screenshot("dashboard-overview")

            pipeline = {"repo": str(repo), "ref": "main", "sha": sha,
                        "steps": [{"name": "setup", "run": "echo preparing"}, {"name": "ticker", "run": TICKER}]}
            response = await page.evaluate(
                f"fetch('/jobs/submit', {{method: 'POST', headers: {{'Content-Type': 'application/json'}},"
                f" body: {json.dumps(json.dumps(pipeline))}}}).then(r => r.json())")
            job_id = response["id"]
            # The overview learns of the new job from /events, without a reload.
            await page.wait_for(f"!!document.querySelector('#live a[href=\"/dashboard/jobs/{job_id}\"]')")

            await wait(lambda: queue.get(job_id).state is JobState.running)
            await page.goto(f"{server.url}/dashboard/jobs/{job_id}")
            first = await page.evaluate("document.querySelectorAll('#log .ln').length")
            # New lines arrive over SSE and render with their colours.
            await page.wait_for(f"document.querySelectorAll('#log .ln').length >= {first + 4}", timeout=30)
            ticked = "[...document.querySelectorAll('#log .ln')].some(l => l.textContent.endsWith('tick 3\\n'))"
            await page.wait_for(ticked, timeout=30)
            assert await page.evaluate("document.querySelector('#log .ln .a-fg2').textContent") == "tick"
            numbers = await page.evaluate("[...document.querySelectorAll('#log .ln .no')].map(a => +a.textContent)")
            assert numbers == list(range(1, len(numbers) + 1))  # no gap, no duplicate between page and stream
            await page.wait_for("document.querySelectorAll('.steps tbody tr').length === 2")
            await page.screenshot("dashboard-job-running")

            await page.click("#cancel")
            await wait(lambda: queue.get(job_id).state is JobState.cancelled, timeout=60)
            await page.wait_for("document.querySelector('h1 .badge').textContent.trim() === 'cancelled'", timeout=30)
            await page.screenshot("dashboard-job-cancelled")
            assert page.errors == []
    engine.check()
    assert engine.execs[-1].signals[:1] == ["TERM"]  # the cancel stopped the step


async def test_sign_in_then_cancel_and_retry_with_a_token_and_protected_reads(api_settings: Settings) -> None:
    settings = with_server(api_settings, protect_reads=True)
    with live_server(settings, {"FORGECI_API_TOKEN": TOKEN}) as server:
        queue = server.runtime.queue
        job_id = enqueue(queue, ref="feature/needs-review")
        async with chromium() as browser:
            page = await browser.new_page()
            await page.goto(f"{server.url}/dashboard/jobs/{job_id}")
            assert await page.evaluate("location.pathname") == "/dashboard/login"
            await page.evaluate("document.getElementById('token').value = 'not the token'")
            await page.click("button[type=submit]")
            await page.wait_for("!!document.querySelector('.banner')")
            await page.screenshot("dashboard-login-failed")
            assert [e for e in page.errors if "401 (Unauthorized)" not in e] == []  # the refusal is a 401 page
            page.errors.clear()
            await page.evaluate(f"document.getElementById('token').value = {json.dumps(TOKEN)}")
            await page.click("button[type=submit]")
            await page.wait_for(f"location.pathname === '/dashboard/jobs/{job_id}'")
            # HttpOnly: the page's scripts never see the session.
            assert await page.evaluate("document.cookie") == ""
            await page.wait_for("!!document.getElementById('cancel')")
            await page.click("#cancel")
            await wait(lambda: queue.get(job_id).state is JobState.cancelled)
            await page.wait_for("!!document.getElementById('retry')")
            await page.click("#retry")
            await page.wait_for(f"location.pathname !== '/dashboard/jobs/{job_id}'")
            new_id = int((await page.evaluate("location.pathname")).rsplit("/", 1)[1])
            assert queue.get(new_id).spec.meta["retry_of"] == str(job_id)
            await page.screenshot("dashboard-after-retry")
            # An EventSource carries the cookie too: the live list works with protected reads.
            await page.goto(f"{server.url}/dashboard")
            other = enqueue(queue, ref="feature/late")
            selector = f"!!document.querySelector('#live a[href=\"/dashboard/jobs/{other}\"]')"
            for _ in range(40):  # until the page's EventSource is connected, an event may find nobody listening
                server.call(lambda: _publish(server, other))
                if await page.evaluate(selector):
                    break
                await asyncio.sleep(0.5)
            await page.wait_for(selector)
            assert page.errors == []


async def _publish(server, job_id: int) -> None:  # type: ignore[no-untyped-def]
    from runner.events import JobEvent

    server.runtime.events.publish(JobEvent(job_id, "queued"))


async def test_pages_are_readable_without_javascript(api_settings: Settings) -> None:
    with live_server(api_settings) as server:
        queue = server.runtime.queue
        job_id = enqueue(queue)
        server.call(lambda: _log(server, job_id))
        finish(queue, job_id, JobState.failure, steps=(("build", "success"), ("test", "failure")))
        async with chromium() as browser:
            page = await browser.new_page()
            await page.send("Emulation.setScriptExecutionDisabled", value=True)
            await page.goto(f"{server.url}/dashboard/jobs/{job_id}")
            await page.send("Emulation.setScriptExecutionDisabled", value=False)
            text = await page.evaluate("document.body.innerText")
            assert "compiling" in text and "3 tests failed" in text and "build" in text and "Retry" in text
            await page.screenshot("dashboard-job-no-js")
            assert page.errors == []


async def test_a_long_snapshot_key_stays_inside_its_card_at_1400px(api_settings: Settings) -> None:
    with live_server(api_settings) as server:
        queue = server.runtime.queue
        job_id = enqueue(queue)
        finish(queue, job_id, JobState.failure, steps=(("build", "failure"),))
        sha = "ab" * 32  # a SHA-256 repository's commit: the longest key a real snapshot has, with no break point
        key = f"snapshots/{job_id}/{sha}/1767225600123.tar.zst"
        queue.put_snapshot(SnapshotRecord(job_id, key, sha, "localhost/forgeci-job:latest", JobState.failure, 0,
                                          "build", 123_456_789, "0" * 64, time.time()))
        async with chromium() as browser:
            page = await browser.new_page(width=1400)
            await page.goto(f"{server.url}/dashboard/jobs/{job_id}")
            assert await page.evaluate("document.getElementById('snapshot-key').textContent") == key
            box = await page.box("#snapshot-key")
            card = await page.box("#snapshot-key", closest=".card")
            assert card["left"] <= box["left"] and box["right"] <= card["right"], (box, card)
            # Nothing inside the card scrolls sideways either (an elided key would be clipped, not overflow).
            assert await page.evaluate(
                "(() => { const c = document.getElementById('snapshot-key').closest('.card');"
                " return c.scrollWidth <= c.clientWidth; })()")
            await page.screenshot("dashboard-job-long-snapshot-key")
            assert page.errors == []


async def _log(server, job_id: int) -> None:  # type: ignore[no-untyped-def]
    from tests.bot.api_helpers import write_log

    log = write_log(server.runtime, job_id, ["compiling", "\x1b[1;31m3 tests failed\x1b[0m"])
    log.close()


# -- pipelines ------------------------------------------------------------------------------------------------------


async def test_an_eight_job_pipeline_reads_as_three_columns(api_settings: Settings) -> None:
    with live_server(api_settings) as server:
        queue = server.runtime.queue
        pipeline_id, ids = make_pipeline(queue)
        run(queue, ids[0])
        run(queue, ids[1])
        run(queue, ids[2], JobState.failure)
        run(queue, ids[3], JobState.running)
        async with chromium() as browser:
            page = await browser.new_page()
            await page.goto(f"{server.url}/dashboard/pipelines/{pipeline_id}")
            columns = await page.evaluate(
                "[...document.querySelectorAll('#dag .node')].map(n => [+n.id.slice(5), +n.dataset.column,"
                " n.getBoundingClientRect().left, n.dataset.state])")
            assert sorted(c[0] for c in columns) == ids
            column_of = {job_id: column for job_id, column, _, _ in columns}
            assert column_of == {ids[0]: 0, **{job_id: 1 for job_id in ids[1:7]}, ids[7]: 2}
            lefts = [{round(left) for _, c, left, _ in columns if c == column} for column in (0, 1, 2)]
            assert all(len(v) == 1 for v in lefts), lefts  # one left edge per column
            assert min(lefts[0]) < min(lefts[1]) < min(lefts[2])
            # Boxes of a column do not overlap, and every need is an edge.
            assert await page.evaluate("document.querySelectorAll('#dag path.edge').length") == 12
            await page.screenshot("dashboard-pipeline-8-jobs")
            assert page.errors == []


HAND_MADE = [("checkout", "checkout", ()), ("lint", "lint", ("checkout",)), ("unit", "unit", ("checkout",)),
             ("types", "types", ("checkout",)), ("integration", "integration", ("unit", "types")),
             ("docs", "docs", ("lint",)), ("package", "package", ("checkout", "unit")),
             ("deploy", "deploy", ("integration", "package", "docs"))]
# Points along every edge that fall inside a box other than the two it joins: an edge seen behind a box reads as
# coming from it.
EDGES_THROUGH_BOXES = """
(() => {
  const dag = document.getElementById('dag').getBoundingClientRect();
  const boxes = [...document.querySelectorAll('#dag .node')].map(n => [n.id.slice(5), n.getBoundingClientRect()]);
  const bad = [];
  for (const path of document.querySelectorAll('#dag path.edge')) {
    for (let d = 0; d <= path.getTotalLength(); d += 4) {
      const p = path.getPointAtLength(d), x = dag.left + p.x, y = dag.top + p.y;
      for (const [id, r] of boxes) {
        if (id !== path.dataset.from && id !== path.dataset.to && x > r.left + 1 && x < r.right - 1
            && y > r.top + 1 && y < r.bottom - 1) bad.push([path.dataset.from, path.dataset.to, id]);
      }
    }
  }
  return bad;
})()
"""


async def test_a_hand_made_dag_of_four_columns_routes_a_skipping_edge_around_the_boxes(api_settings: Settings) -> None:
    with live_server(api_settings) as server:
        queue = server.runtime.queue
        pipeline_id, ids = make_pipeline(queue, HAND_MADE)
        run(queue, ids[0])
        run(queue, ids[1], JobState.failure)
        run(queue, ids[2], JobState.running)
        async with chromium() as browser:
            page = await browser.new_page()
            await page.goto(f"{server.url}/dashboard/pipelines/{pipeline_id}")
            columns = await page.evaluate("Object.fromEntries([...document.querySelectorAll('#dag .node')]"
                                          ".map(n => [n.id.slice(5), +n.dataset.column]))")
            assert [columns[str(job_id)] for job_id in ids] == [0, 1, 1, 1, 2, 2, 2, 3]
            assert await page.evaluate("document.querySelectorAll('#dag path.edge').length") == 11  # one per need
            assert await page.evaluate(EDGES_THROUGH_BOXES) == []
            # All four columns fit the page at its usual width: nothing scrolls sideways.
            assert await page.evaluate("(() => { const s = document.querySelector('.dag-scroll');"
                                       " return s.scrollWidth <= s.clientWidth; })()")
            await page.screenshot("dashboard-pipeline-hand-made-dag")
            assert page.errors == []


def node(job_id: int) -> str:
    return f"document.getElementById('node-{job_id}')"


async def test_a_pipeline_page_follows_its_jobs_live_then_cancel_and_retry(settings: Settings,
                                                                           make_repo: MakeRepo) -> None:
    repo, sha = make_repo({".forgeci.toml": EIGHT_TOML})
    engine = FakeEngine()
    engine.expect("lint", Script(delay=3), Script(delay=3))  # long enough to watch it end
    for python in PYTHONS:
        for db in DBS:
            engine.on(f"pytest {python} {db}", Script(delay=0.2))
    engine.expect("build", Script(hang=True), Script())  # the first build hangs until the pipeline is cancelled
    with live_server(settings, workers=True, engine=engine) as server:
        queue = server.runtime.queue
        submitted = server.call(server.runtime.control.submit_pipeline(JobSpec(repo=str(repo), ref="main", sha=sha)))
        pipeline_id, ids = submitted.pipeline_id, list(submitted.job_ids)
        lint, build = ids[0], ids[-1]
        await wait(lambda: queue.get(lint).state is JobState.running)
        async with chromium() as browser:
            page = await browser.new_page()
            await page.goto(f"{server.url}/dashboard/pipelines/{pipeline_id}")
            assert await page.evaluate(f"{node(lint)}.dataset.column") == "0"
            assert await page.evaluate(f"{node(build)}.dataset.column") == "2"
            await page.evaluate("window.stayed = true")  # gone if the page reloaded
            assert await page.evaluate(f"{node(lint)}.classList.contains('st-running')")
            await page.screenshot("dashboard-pipeline-live-lint-running")
            # The box turns green when the job ends, over /events, without a reload; its edges follow.
            await page.wait_for(f"{node(lint)}.classList.contains('st-success')", timeout=30)
            await page.wait_for(f"{node(build)}.classList.contains('st-running')", timeout=30)
            assert await page.evaluate("window.stayed === true")
            assert await page.evaluate(f"document.querySelector('path[data-from=\"{lint}\"]').classList"
                                       f".contains('e-done')")
            # Its running time counts on in the browser between events (none comes while the step hangs).
            await page.wait_for(f"/^[2-9]s…$/.test({node(build)}.querySelector('.node-time').textContent)", timeout=15)
            await page.screenshot("dashboard-pipeline-live-build-running")

            await page.click("#cancel-pipeline")
            await wait(lambda: queue.pipeline(pipeline_id).state is PipelineState.cancelled)
            await page.wait_for(f"{node(build)}.classList.contains('st-cancelled')")
            await page.wait_for("document.querySelector('h1 .badge').textContent.trim() === 'cancelled'")
            await page.screenshot("dashboard-pipeline-cancelled")

            await page.click("#retry-failed")  # the cancelled build again, in the same pipeline
            await wait(lambda: queue.pipeline(pipeline_id).state is PipelineState.success)
            await page.wait_for(f"{node(build)}.classList.contains('st-success')")
            await page.wait_for("document.querySelector('h1 .badge').textContent.trim() === 'success'")
            assert await page.evaluate("location.pathname") == f"/dashboard/pipelines/{pipeline_id}"
            await page.screenshot("dashboard-pipeline-retried-failed")

            await page.click("#retry")  # a new pipeline at the same commit
            await page.wait_for(f"location.pathname !== '/dashboard/pipelines/{pipeline_id}'")
            new_id = int((await page.evaluate("location.pathname")).rsplit("/", 1)[1])
            assert queue.pipeline(new_id).spec.meta["retry_of_pipeline"] == str(pipeline_id)
            assert queue.pipeline(new_id).sha == sha
            await page.wait_for(f"!!document.querySelector('a[href=\"/dashboard/pipelines/{pipeline_id}\"]')")
            await wait(lambda: queue.pipeline(new_id).state.is_terminal, timeout=60)
            await page.wait_for("document.querySelector('h1 .badge').textContent.trim() === 'success'")

            # A job's page leads back to its pipeline.
            await page.click(f"#node-{queue.pipeline(new_id).job_ids[0]}")
            await page.wait_for("!!document.getElementById('pipeline-link')")
            await page.click("#pipeline-link")
            await page.wait_for(f"location.pathname === '/dashboard/pipelines/{new_id}'")
            assert page.errors == []
    engine.check()


async def test_the_overview_lists_pipelines_that_open_to_their_jobs_and_stay_open(api_settings: Settings) -> None:
    with live_server(api_settings) as server:
        queue = server.runtime.queue
        pipeline_id, ids = make_pipeline(queue)
        run(queue, ids[0])
        async with chromium() as browser:
            page = await browser.new_page()
            await page.goto(f"{server.url}/dashboard")
            row = f"document.getElementById('pl-{pipeline_id}')"
            assert await page.evaluate(f"{row}.querySelectorAll('.dots i').length") == 8
            assert not await page.evaluate(f"{row}.open")
            await page.click(f"#pl-{pipeline_id} summary .caret")
            await page.wait_for(f"{row}.open")
            links = await page.evaluate(f"[...{row}.querySelectorAll('table a')].map(a => a.getAttribute('href'))")
            assert links == [f"/dashboard/jobs/{job_id}" for job_id in ids]
            # A live refresh (the next job starts) redraws the list and keeps the row open.
            await page.evaluate(f"{row}.dataset.old = 'yes'")
            run(queue, ids[1], JobState.running)
            for _ in range(40):  # until the page's EventSource is connected, an event may find nobody listening
                server.call(lambda: _publish(server, ids[1]))
                if await page.evaluate(f"{row}.dataset.old !== 'yes'"):
                    break
                await asyncio.sleep(0.25)
            assert await page.evaluate(f"{row}.dataset.old === undefined && {row}.open")
            assert await page.evaluate(f"{row}.querySelectorAll('.dots i.bg-running').length") == 1
            # The queued list says why each job waits, in the API's words, and the live refresh renews it.
            reason = "document.querySelector('#queued-{} .wait').textContent".format
            assert await page.evaluate(reason(ids[-1])) == "waits for test"
            assert await page.evaluate(reason(ids[2])) == "next in line"
            run(queue, ids[2], JobState.running)
            for _ in range(40):
                server.call(lambda: _publish(server, ids[2]))
                if await page.evaluate(f"!document.getElementById('queued-{ids[2]}')"):
                    break
                await asyncio.sleep(0.25)
            assert await page.evaluate(reason(ids[3])) == "no free slot: 2 of 2 running"
            await page.screenshot("dashboard-overview-pipelines")
            assert page.errors == []
