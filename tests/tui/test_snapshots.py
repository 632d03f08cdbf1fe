"""SVG snapshots of the console's screens at 80x24 (update with `pytest --snapshot-update`, then look at them)."""

from __future__ import annotations

from collections.abc import Callable

from textual.pilot import Pilot
from textual.widgets import Input, Sparkline

from tests.client.fake_api import FakeApi
from tests.tui.conftest import wait_until
from tui.app import ForgeciApp
from tui.panels import CachePanel, JobsPanel, QueuePanel
from tui.pipeline_screen import PipelineScreen
from tui.pipelines_panel import PipelinesPanel
from tui.screens import JobScreen
from tui.widgets import LogView

SIZE = (80, 24)
SnapCompare = Callable[..., bool]


async def jobs_loaded(pilot: Pilot[None], rows: int = 6) -> None:
    app = pilot.app
    table = app.query_one(JobsPanel).table
    await wait_until(pilot, lambda: table.row_count == rows and table.jobs[3].steps)


def test_jobs_screen(snap_compare: SnapCompare, make_app: Callable[..., ForgeciApp], api: FakeApi) -> None:
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=jobs_loaded)


def test_job_screen_with_a_live_log(snap_compare: SnapCompare, make_app: Callable[..., ForgeciApp],
                                    api: FakeApi) -> None:
    async def open_running_job(pilot: Pilot[None]) -> None:
        await jobs_loaded(pilot)
        table = pilot.app.query_one(JobsPanel).table
        table.move_cursor(row=table.get_row_index("3"))
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, JobScreen) and pilot.app.screen.job is not None
                         and pilot.app.screen.query_one(LogView).line_count == 5)

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=open_running_job)


def test_queue_panel(snap_compare: SnapCompare, make_app: Callable[..., ForgeciApp], api: FakeApi) -> None:
    async def queue(pilot: Pilot[None]) -> None:
        await jobs_loaded(pilot)
        await pilot.press("2")
        await wait_until(pilot, lambda: pilot.app.query_one(QueuePanel).table.row_count == 2)

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=queue)


def test_metrics_panel(snap_compare: SnapCompare, make_app: Callable[..., ForgeciApp], api: FakeApi) -> None:
    async def metrics(pilot: Pilot[None]) -> None:
        await jobs_loaded(pilot)
        await pilot.press("3")
        await wait_until(pilot, lambda: pilot.app.query_one(Sparkline).data)

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=metrics)


def test_cache_panel(snap_compare: SnapCompare, make_app: Callable[..., ForgeciApp], api: FakeApi) -> None:
    async def cache(pilot: Pilot[None]) -> None:
        await jobs_loaded(pilot)
        await pilot.press("4")
        await wait_until(pilot, lambda: pilot.app.query_one(CachePanel).entries)

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=cache)


def test_help_screen(snap_compare: SnapCompare, make_app: Callable[..., ForgeciApp], api: FakeApi) -> None:
    async def help(pilot: Pilot[None]) -> None:
        await jobs_loaded(pilot)
        await pilot.press("?")

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=help)


def test_submit_form_with_problems(snap_compare: SnapCompare, make_app: Callable[..., ForgeciApp],
                                   api: FakeApi) -> None:
    async def form(pilot: Pilot[None]) -> None:
        await jobs_loaded(pilot)
        await pilot.press("n")
        pilot.app.screen.query_one("#sha", Input).value = "not-a-sha"
        pilot.app.screen.query_one("#sha", Input).focus()
        await pilot.press("enter")

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=form)


def test_server_unreachable(snap_compare: SnapCompare, make_app: Callable[..., ForgeciApp], api: FakeApi) -> None:
    api.down = True

    async def offline(pilot: Pilot[None]) -> None:
        await wait_until(pilot, lambda: pilot.app.connection == "offline")  # type: ignore[attr-defined]

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=offline)


async def pipelines_loaded(pilot: Pilot[None]) -> None:
    await jobs_loaded(pilot, rows=6 + 13)  # and the pipelines' jobs
    await pilot.press("5")
    table = pilot.app.query_one(PipelinesPanel).table
    await wait_until(pilot, lambda: table.row_count == 5)


async def running_pipeline_open(pilot: Pilot[None]) -> None:
    await pipelines_loaded(pilot)
    table = pilot.app.query_one(PipelinesPanel).table
    table.move_cursor(row=table.get_row_index("4"))
    await pilot.press("enter")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, PipelineScreen) and pilot.app.screen.pipeline
                     is not None)
    screen = pilot.app.screen
    assert isinstance(screen, PipelineScreen)
    screen.table.move_cursor(row=screen.table.get_row_index("21"))  # a queued job: its wait reason below


def test_pipelines_panel(snap_compare: SnapCompare, make_app: Callable[..., ForgeciApp],
                         piped: FakeApi) -> None:
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=pipelines_loaded)


def test_pipeline_screen_by_stage(snap_compare: SnapCompare, make_app: Callable[..., ForgeciApp],
                                  piped: FakeApi) -> None:
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=running_pipeline_open)


def test_failed_pipeline_screen(snap_compare: SnapCompare, make_app: Callable[..., ForgeciApp],
                                piped: FakeApi) -> None:
    async def failed(pilot: Pilot[None]) -> None:
        await pipelines_loaded(pilot)
        table = pilot.app.query_one(PipelinesPanel).table
        table.move_cursor(row=table.get_row_index("2"))
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, PipelineScreen) and pilot.app.screen.pipeline
                         is not None)
        screen = pilot.app.screen
        assert isinstance(screen, PipelineScreen)
        screen.table.move_cursor(row=screen.table.get_row_index("13"))  # the failed job: its error below

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=failed)


def test_cancel_pipeline_asks_first(snap_compare: SnapCompare, make_app: Callable[..., ForgeciApp],
                                    piped: FakeApi) -> None:
    async def asking(pilot: Pilot[None]) -> None:
        await running_pipeline_open(pilot)
        await pilot.press("c")

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=asking)
