"""The jobs panel: what it shows, live updates from /events, filters, sorting, and how few requests it makes."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.widgets import Select

from tests.client.fake_api import NOW, FakeApi, make_job
from tests.tui.conftest import APP, wait_until
from tui.app import ForgeciApp
from tui.job_table import JobTable
from tui.panels import JobsPanel


def table_of(app: ForgeciApp) -> JobTable:
    return app.query_one(JobsPanel).table


def row(app: ForgeciApp, job_id: int) -> list[str]:
    return [str(cell) for cell in table_of(app).get_row(str(job_id))]


def order(app: ForgeciApp) -> list[int]:
    table = table_of(app)
    return [int(table.coordinate_to_cell_key((i, 0)).row_key.value or 0) for i in range(table.row_count)]


async def test_the_jobs_panel_lists_jobs_newest_first_with_every_column(make_app: Callable[..., ForgeciApp],
                                                                        api: FakeApi) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: table_of(app).row_count == 6, what="six rows")
        assert order(app) == [6, 5, 4, 3, 2, 1]
        assert row(app, 2) == ["2", "acme/app", "feature/login", "0123456", "failure", "5", "35s", "—"]
        assert row(app, 5)[:6] == ["5", "acme/web", "v1.2.0", "0123456", "queued", "8"]
        # A running job: its duration runs on the app's clock, its step from a look at the job.
        assert row(app, 3)[4:7] == ["running", "5", "30s"]
        await wait_until(pilot, lambda: row(app, 3)[7] == "2/?", what="the running job's step")
        state_cell = table_of(app).get_row("2")[4]
        assert "red" in str(state_cell.style)  # states are coloured
        list_call = api.calls("GET", "/jobs")[0]
        assert list_call.url.params["order"] == "newest" and "status" not in list_call.url.params


async def test_a_change_on_the_server_shows_within_a_second(make_app: Callable[..., ForgeciApp],
                                                            api: FakeApi) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: table_of(app).row_count == 6)
        await wait_until(pilot, lambda: api.event_feeds, what="the /events subscription")
        api.set_state(4, "running", started_at=NOW)
        await wait_until(pilot, lambda: row(app, 4)[4] == "running", timeout=1.0, what="job 4 running")
        api.publish(4, "running", "step", index=0, name="install", total=3)
        await wait_until(pilot, lambda: row(app, 4)[7] == "1/3", timeout=1.0, what="step 1/3")
        api.publish(4, "running", "step", index=1, name="test", total=3)
        await wait_until(pilot, lambda: row(app, 4)[7] == "2/3", timeout=1.0, what="step 2/3")
        api.set_state(3, "failure", finished_at=NOW)
        await wait_until(pilot, lambda: row(app, 3)[4] == "failure", timeout=1.0, what="job 3 failed")
        # A job submitted elsewhere appears at the top: the event names it, one look fetches it.
        api.add(make_job(7, repo="https://github.com/acme/new.git", queued_at=NOW))
        api.publish(7, "queued", priority=5, repo="https://github.com/acme/new.git", ref="refs/heads/main")
        await wait_until(pilot, lambda: 7 in table_of(app).jobs and order(app)[0] == 7, timeout=1.0,
                         what="the new job on top")
        assert row(app, 7)[1] == "acme/new"


async def test_an_idle_console_makes_less_than_one_request_a_second(make_app: Callable[..., ForgeciApp],
                                                                    api: FakeApi) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: table_of(app).row_count == 6 and row(app, 3)[7] == "2/?")
        await pilot.pause(0.5)
        before = len(api.requests)
        started = time.monotonic()
        await pilot.pause(3.0)
        idle_seconds = time.monotonic() - started
        made = len(api.requests) - before
        assert made < idle_seconds, f"{made} requests in {idle_seconds:.1f} s of idling"
        # And it is still live: the one open /events stream carries the next change.
        api.set_state(4, "cancelled", finished_at=NOW)
        await wait_until(pilot, lambda: row(app, 4)[4] == "cancelled", timeout=1.0)


async def test_filters_ask_the_server_and_follow_events(make_app: Callable[..., ForgeciApp], api: FakeApi) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: table_of(app).row_count == 6)
        app.query_one("#state-filter", Select).value = "queued"
        await wait_until(pilot, lambda: sorted(table_of(app).jobs) == [4, 5], what="only the queued jobs")
        assert api.calls("GET", "/jobs")[-1].url.params["status"] == "queued"
        api.set_state(4, "running", started_at=NOW)  # no longer queued: it leaves the filtered list
        await wait_until(pilot, lambda: sorted(table_of(app).jobs) == [5], timeout=1.0)
        await pilot.press("x")  # clear filters
        await wait_until(pilot, lambda: table_of(app).row_count == 6)
        repo_select = app.query_one("#repo-filter", Select)
        assert ("acme/web", "https://github.com/acme/web.git") in [(str(p), v) for p, v in repo_select._options]
        repo_select.value = APP
        await wait_until(pilot, lambda: sorted(table_of(app).jobs) == [1, 2, 4, 6], what="only acme/app")
        assert api.calls("GET", "/jobs")[-1].url.params["repo"] == APP


async def test_sorting_by_key_and_by_header(make_app: Callable[..., ForgeciApp], api: FakeApi) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: table_of(app).row_count == 6)
        table_of(app).move_cursor(row=order(app).index(3))
        for _ in range(4):  # id -> repo -> ref -> sha -> state
            await pilot.press("s")
        states = [table_of(app).jobs[i].state for i in order(app)]
        assert states == ["queued", "queued", "running", "success", "failure", "cancelled"]
        assert table_of(app).selected is not None and table_of(app).selected.id == 3  # the cursor stays on its job
        await pilot.press("S")
        assert [table_of(app).jobs[i].state for i in order(app)] == list(reversed(states))
        await pilot.click("#jobs-table", offset=(60, 0))  # the "pri" header... or near it: sort by that column
        panel = app.query_one(JobsPanel)
        assert panel.sort_column in ("priority", "duration")
        key = {"priority": lambda j: j.priority, "duration": lambda j: j.duration or 0}[panel.sort_column]
        values = [key(table_of(app).jobs[i]) for i in order(app)]
        assert values == sorted(values, reverse=panel.reverse)
