"""The queue, metrics and cache panels, the help screen, and failures: unreachable server, refused token."""

from __future__ import annotations

from collections.abc import Callable

from textual.widgets import DataTable, Sparkline, Static

from tests.client.fake_api import NOW, FakeApi, make_job
from tests.tui.conftest import record_notifications, wait_until
from tui.app import RECONNECT_MAX, ForgeciApp
from tui.job_table import JobTable
from tui.panels import CachePanel, JobsPanel, MetricsPanel, QueuePanel
from tui.screens import ConfirmScreen, HelpScreen, JobScreen, help_rows
from tui.widgets import StatusBar


def status_bar(app: ForgeciApp) -> str:
    return str(app.screen.query_one(StatusBar).render())


async def test_the_queue_panel_lists_queued_jobs_in_dispatch_order(make_app: Callable[..., ForgeciApp],
                                                                   api: FakeApi) -> None:
    api.add(make_job(7, state="queued", priority=8, queued_at=NOW - 10))
    api.wait_reasons = {7: "waits for lint", 4: "no free slot: 2 of 2 running"}
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.query_one(JobsPanel).table.row_count == 7)
        assert api.calls("GET", "/jobs")[-1].url.params["order"] == "newest"  # nothing fetched for hidden panels
        await pilot.press("2")
        table = app.query_one(QueuePanel).table
        await wait_until(pilot, lambda: table.row_count == 3)
        assert api.calls("GET", "/jobs")[-1].url.params["order"] == "dispatch"
        assert [str(table.get_row_at(i)[0]) for i in range(3)] == ["5", "7", "4"]  # priority 8 first, then oldest
        assert str(table.get_row("4")[-2]) == "2m00s"  # how long it has waited
        assert [str(table.get_row(key)[-1]) for key in ("7", "4")] == ["waits for lint", "no free slot: 2 of 2 running"]
        assert "3 queued" in str(app.query_one("#queue-summary", Static).render())
        assert table.has_focus
        await pilot.press("p")  # actions work here too
        await pilot.press("escape")
        api.set_state(5, "running", started_at=NOW)  # dispatched: it leaves the queue
        await wait_until(pilot, lambda: table.row_count == 2, timeout=1.0)
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, JobScreen) and app.screen.job_id == 7)


async def test_the_metrics_panel_shows_headline_numbers_and_a_sparkline(make_app: Callable[..., ForgeciApp],
                                                                       api: FakeApi) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        numbers = app.query_one("#metrics-numbers", Static)
        await wait_until(pilot, lambda: "jobs finished" in str(numbers.render()))
        text = str(numbers.render())
        assert "last day" in text and "success rate   83%" in text and "avg duration   42s" in text
        assert "p95 duration   1m30s" in text and "cache hit rate 75%" in text and "queued now     2" in text
        assert app.query_one(Sparkline).data == [0.0, 11.0, 12.0, 0.0, 14.0, 15.0, 0.0, 17.0, 18.0, 0.0, 20.0, 21.0]
        await pilot.press("t")
        await wait_until(pilot, lambda: "last week" in str(numbers.render()))
        assert [r.url.params["range"] for r in api.calls("GET", "/metrics")] == ["day", "week"]
        api.set_state(4, "success", finished_at=NOW)  # a finished job changes the numbers: reloaded (debounced)
        await wait_until(pilot, lambda: len(api.calls("GET", "/metrics")) == 3, timeout=MetricsPanel.RELOAD_DELAY + 2)


async def test_the_metrics_panel_shows_each_quota_s_use(make_app: Callable[..., ForgeciApp], api: FakeApi) -> None:
    api.quotas = [{"match": "acme/*", "running": 3, "max_running": 4, "queued": 0, "max_queued": 0, "minutes": 412.5,
                   "minutes_per_month": 3000, "per_user_running": 0, "users": {}}]
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        numbers = app.query_one("#metrics-numbers", Static)
        await wait_until(pilot, lambda: "quota" in str(numbers.render()))
        assert "quota          acme/*: running 3/4, minutes this month 412.5/3000" in str(numbers.render())


async def test_the_cache_panel_lists_entries_and_deletes_after_confirmation(make_app: Callable[..., ForgeciApp],
                                                                            api: FakeApi) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        table = app.query_one("#cache-table", DataTable)
        await wait_until(pilot, lambda: table.row_count == 2)
        assert [str(c) for c in table.get_row_at(0)] == ["acme/app/main/3f2a9c", "175.5 MB", "12", "5m00s ago"]
        summary = str(app.query_one("#cache-summary", Static).render())
        assert "2 entries, 225.4 MB, hit rate 75%" in summary
        await pilot.press("d")
        assert isinstance(app.screen, ConfirmScreen) and "acme/app/main/3f2a9c" in app.screen.question
        await pilot.press("n")
        assert api.calls("DELETE", "/cache/acme%2Fapp%2Fmain%2F3f2a9c") == []
        await pilot.press("d", "y")
        await wait_until(pilot, lambda: table.row_count == 1)
        assert [r.url.raw_path for r in api.requests if r.method == "DELETE"] == [b"/cache/acme%2Fapp%2Fmain%2F3f2a9c"]
        assert [e["key"] for e in api.cache] == ["acme/api/main/77aa01"]


async def test_a_missing_cache_endpoint_is_an_error_notification(make_app: Callable[..., ForgeciApp],
                                                                 api: FakeApi) -> None:
    api.cache_stats_missing = True
    app = make_app()
    notes = record_notifications(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        await wait_until(pilot, lambda: notes)
        assert notes[0][0] == "error" and "GET /cache/stats: 404" in notes[0][1]
        assert app.query_one(CachePanel).stale and app.is_running


async def test_an_unreachable_server_is_reported_and_the_console_reconnects(make_app: Callable[..., ForgeciApp],
                                                                           api: FakeApi) -> None:
    api.down = True
    app = make_app()
    notes = record_notifications(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.connection == "offline")
        assert "unreachable" in status_bar(app)
        assert [s for s, _ in notes] == ["error"]
        assert "cannot reach the forgeci server at http://forgeci.test" in notes[0][1]
        await pilot.pause(1.5)  # retries, with a back-off, and no more notifications
        assert len(notes) == 1 and len(api.calls("GET", "/events")) >= 2
        api.down = False
        await wait_until(pilot, lambda: app.connection == "online", timeout=10)
        await wait_until(pilot, lambda: app.query_one(JobsPanel).table.row_count == 6)
        assert "live" in status_bar(app) and notes[-1] == ("information", "connected to http://forgeci.test again")
        # The server goes away in the middle: the open job screen says so too, then everything comes back.
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, JobScreen) and app.screen.job is not None)
        api.go_down()
        await wait_until(pilot, lambda: app.connection == "offline")
        assert "unreachable" in status_bar(app) and notes[-1][0] == "error"
        api.down = False
        await wait_until(pilot, lambda: app.connection == "online", timeout=10)
        assert isinstance(app.screen, JobScreen)


async def test_a_refused_token_is_reported_and_retried(make_app: Callable[..., ForgeciApp], api: FakeApi) -> None:
    api.token = "right"
    app = make_app(token="wrong")
    notes = record_notifications(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.connection == "unauthorized")
        assert "token refused" in status_bar(app)
        assert notes == [("error", "token refused: the server refused the API token (401 unauthorized): "
                                  "set FORGECI_API_TOKEN to the server's token")]
        assert "wrong" not in repr(app.client) and all(
            r.headers["Authorization"] == "Bearer wrong" for r in api.requests)
        api.token = "wrong"  # the operator fixed the server's token: the console recovers by itself
        # by its next reconnect, whose back-off may have grown to RECONNECT_MAX on a loaded machine
        await wait_until(pilot, lambda: app.connection == "online", timeout=RECONNECT_MAX + 10)
        await wait_until(pilot, lambda: app.query_one(JobsPanel).table.row_count == 6)


async def test_help_lists_every_key(make_app: Callable[..., ForgeciApp], api: FakeApi) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("?")
        assert isinstance(app.screen, HelpScreen)
        shown = str(app.screen.query_one("#help Static", Static).render())
        for cls in (ForgeciApp, JobTable, JobsPanel, MetricsPanel, CachePanel, JobScreen, ConfirmScreen):
            for keys, description in help_rows(cls.BINDINGS):
                assert f"{keys}" in shown and description in shown, (cls.__name__, keys, description)
        assert "Search the log" in shown and "Retry from the failed step" in shown
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, JobScreen))
        await pilot.press("?")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("q")  # closes the help, does not quit
        assert isinstance(app.screen, JobScreen) and app.is_running
