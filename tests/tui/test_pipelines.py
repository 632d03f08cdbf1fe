"""The pipelines panel and the pipeline screen: the live list, jobs by stage, a job's log, cancel and retry."""

from __future__ import annotations

from collections.abc import Callable

from textual.pilot import Pilot
from textual.widgets import Select, Static

from tests.client.fake_api import NOW, FakeApi
from tests.tui.conftest import record_notifications, wait_until
from tui.app import ForgeciApp
from tui.panels import JobsPanel
from tui.pipeline_screen import PipelineScreen
from tui.pipelines_panel import PipelinesPanel, PipelineTable
from tui.screens import ConfirmScreen, JobScreen
from tui.widgets import LogView

MakeApp = Callable[..., ForgeciApp]


async def show_pipelines(pilot: Pilot[None], rows: int = 5) -> PipelineTable:
    await pilot.press("5")
    table = pilot.app.query_one(PipelinesPanel).table
    await wait_until(pilot, lambda: table.row_count == rows, what=f"{rows} pipelines in the list")
    return table


async def select(pilot: Pilot[None], table: PipelineTable, pipeline_id: int) -> None:
    await wait_until(pilot, lambda: pipeline_id in table.pipelines)
    table.move_cursor(row=table.get_row_index(str(pipeline_id)))
    table.focus()
    await pilot.pause()


async def open_pipeline(pilot: Pilot[None], pipeline_id: int, rows: int = 5) -> PipelineScreen:
    table = await show_pipelines(pilot, rows)
    await select(pilot, table, pipeline_id)
    await pilot.press("enter")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, PipelineScreen)
                     and pilot.app.screen.pipeline is not None, what="the pipeline screen")
    screen = pilot.app.screen
    assert isinstance(screen, PipelineScreen) and screen.pipeline_id == pipeline_id
    return screen


def cells(table: PipelineTable, pipeline_id: int) -> list[str]:
    return [str(cell) for cell in table.get_row(str(pipeline_id))]


async def test_the_panel_lists_pipelines_newest_first_with_jobs_done_and_time(make_app: MakeApp,
                                                                             piped: FakeApi) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        table = await show_pipelines(pilot)
        assert list(table.pipelines) == [5, 4, 3, 2, 1]
        assert cells(table, 4) == ["4", "acme/app", "main", "0123456", "running", "3/8", "3m20s"]
        assert cells(table, 2) == ["2", "acme/api", "feature/login", "0123456", "failure", "3/3", "1m00s"]
        assert cells(table, 5)[4:] == ["planning", "—", "—"]
        assert cells(table, 3)[2] == "!42"
        summary = app.query_one("#pipelines-summary", Static)
        assert "5 pipelines, newest first" in str(summary.render())
        assert [r.url.params.get("limit") for r in piped.calls("GET", "/pipelines")] == ["100"]


async def test_the_state_filter_asks_the_server(make_app: MakeApp, piped: FakeApi) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        table = await show_pipelines(pilot)
        app.query_one("#pipeline-state-filter", Select).value = "failure"
        await wait_until(pilot, lambda: list(table.pipelines) == [2], what="only the failed pipeline")
        assert piped.calls("GET", "/pipelines")[-1].url.params["status"] == "failure"
        app.query_one("#pipeline-state-filter", Select).value = "skipped"  # every job ruled out by its filters
        await wait_until(pilot, lambda: piped.calls("GET", "/pipelines")[-1].url.params.get("status") == "skipped",
                         what="the skipped filter asked for")
        await pilot.press("x")
        await wait_until(pilot, lambda: table.row_count == 5)


async def test_the_pipeline_screen_groups_its_jobs_by_stage_with_wait_reasons(make_app: MakeApp,
                                                                              piped: FakeApi) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_pipeline(pilot, 4)
        table = screen.table
        rows = {str(key.value): [str(c) for c in table.get_row(key)] for key in table.rows}
        assert list(rows) == [str(i) for i in range(16, 24)]
        assert [row[0] for row in rows.values()] == ["1", "2", "", "", "", "", "3", "4"]  # stage on its first row
        assert rows["19"][1:4] == ["test (python=3.12, db=sqlite)", "running", "1m40s"]
        assert rows["21"][2:] == ["queued", "—", "max_parallel: 2 of test's 2 running"]
        assert rows["22"][4] == "waits for test" and rows["17"][4] == "after lint"
        head = str(screen.query_one("#pipeline-head", Static).render())
        assert "pipeline #4" in head and "3/8 jobs done" in head and "stages 4" in head
        table.move_cursor(row=table.get_row_index("23"))
        await pilot.pause()
        detail = str(screen.query_one("#pipeline-job-detail", Static).render())
        assert "#23 deploy" in detail and "needs build" in detail and "waits for build" in detail


async def test_enter_opens_a_jobs_screen_with_its_log_and_escape_comes_back(make_app: MakeApp,
                                                                           piped: FakeApi) -> None:
    piped.log(19, "collected 120 items", "tests/test_api.py ....")
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_pipeline(pilot, 4)
        screen.table.move_cursor(row=screen.table.get_row_index("19"))
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, JobScreen) and app.screen.job is not None
                         and app.screen.query_one(LogView).line_count == 2, what="job 19 and its log")
        assert app.screen.job_id == 19  # type: ignore[attr-defined]
        await pilot.press("5")  # the tab keys do nothing over a screen
        await pilot.press("escape")
        assert app.screen is screen
        await pilot.press("escape")
        assert not isinstance(app.screen, PipelineScreen | JobScreen)


async def test_job_events_move_the_screen_and_the_list_without_waiting_for_the_server(
        make_app: MakeApp, piped: FakeApi) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_pipeline(pilot, 4)
        piped.set_state(19, "success", finished_at=NOW)
        await wait_until(pilot, lambda: str(screen.table.get_row("19")[2]) == "success", timeout=1.0)
        assert screen.pipeline is not None and screen.pipeline.jobs_done == 4
        fetched = len(piped.calls("GET", "/pipelines/4"))
        await wait_until(pilot, lambda: len(piped.calls("GET", "/pipelines/4")) > fetched, timeout=2.0,
                         what="a reload for the wait reasons")
        piped.wait_reasons[21] = "next in line"
        piped.publish(21, "queued", "ready")
        await wait_until(pilot, lambda: str(screen.table.get_row("21")[4]) == "next in line", timeout=2.0)
        await pilot.press("escape")
        table = app.query_one(PipelinesPanel).table
        await wait_until(pilot, lambda: cells(table, 4)[5] == "4/8", timeout=2.0, what="the list's jobs done")


async def test_pipeline_events_reach_the_pipeline_views_and_not_the_job_views(make_app: MakeApp,
                                                                              piped: FakeApi) -> None:
    app = make_app()
    notes = record_notifications(app)
    async with app.run_test(size=(80, 24)) as pilot:
        table = await show_pipelines(pilot)
        jobs_before = len(piped.calls("GET", "/jobs/status"))
        piped.pipelines[6] = {**piped.pipelines[5], "id": 6}
        piped.publish_pipeline(6, "planning")
        await wait_until(pilot, lambda: 6 in table.pipelines, timeout=2.0, what="the new pipeline")
        screen = await open_pipeline(pilot, 5, rows=6)
        piped.set_pipeline_state(5, "error", error="cannot fetch the repository: connection refused")
        await wait_until(pilot, lambda: screen.pipeline is not None and screen.pipeline.state == "error", timeout=2.0)
        await wait_until(pilot, lambda: "connection refused" in str(screen.query_one("#pipeline-head",
                                                                                     Static).render()))
        assert len(piped.calls("GET", "/jobs/status")) == jobs_before  # no job view took it for a job's
        assert app.query_one(JobsPanel).table.row_count == 6 + 13 and notes == []  # the jobs list: none new


async def test_cancel_asks_first_then_stops_the_pipeline(make_app: MakeApp, piped: FakeApi) -> None:
    app = make_app()
    notes = record_notifications(app)
    async with app.run_test(size=(80, 24)) as pilot:
        table = await show_pipelines(pilot)
        await select(pilot, table, 4)
        await pilot.press("c")
        assert isinstance(app.screen, ConfirmScreen) and "pipeline #4 (running, 3/8 jobs done)" in app.screen.question
        await pilot.press("n")
        await pilot.pause()
        assert piped.calls("POST", "/pipelines/4/cancel") == []
        await pilot.press("c", "y")
        await wait_until(pilot, lambda: ("information", "pipeline #4: stopping its running jobs") in notes)
        assert [piped.jobs[i].state for i in (19, 21, 22, 23)] == ["running", "cancelled", "cancelled", "cancelled"]
        await wait_until(pilot, lambda: cells(table, 4)[5] == "6/8", timeout=2.0)
        await select(pilot, table, 2)
        await pilot.press("c")
        assert not isinstance(app.screen, ConfirmScreen) and notes[-1] == ("warning", "pipeline #2 is already failure")


async def test_cancel_from_the_screen_shows_its_running_jobs_stopping(make_app: MakeApp,
                                                                      piped: FakeApi) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_pipeline(pilot, 4)
        await pilot.press("c", "y")
        await wait_until(pilot, lambda: str(screen.table.get_row("22")[2]) == "cancelled", timeout=2.0)
        await wait_until(pilot, lambda: screen.pipeline is not None and screen.pipeline.cancel_requested, timeout=2.0)
        assert [str(screen.table.get_row(str(i))[2]) for i in (18, 19, 20)] == ["success", "cancelling", "cancelling"]
        piped.set_state(19, "cancelled", finished_at=NOW)
        piped.set_state(20, "cancelled", finished_at=NOW)
        piped.set_pipeline_state(4, "cancelled", finished_at=NOW)
        await wait_until(pilot, lambda: "cancelled  8/8 jobs done" in str(screen.query_one("#pipeline-head",
                                                                                            Static).render()))


async def test_retry_whole_or_failed_and_refusals(make_app: MakeApp, piped: FakeApi) -> None:
    app = make_app()
    notes = record_notifications(app)
    async with app.run_test(size=(80, 24)) as pilot:
        table = await show_pipelines(pilot)
        await select(pilot, table, 2)
        await pilot.press("r")
        await wait_until(pilot, lambda: 6 in table.pipelines, timeout=2.0, what="the retry in the list")
        assert ("information", "pipeline #6 queued: a retry of #2 (3 jobs)") in notes
        await select(pilot, table, 2)
        await pilot.press("R")
        await wait_until(pilot, lambda: ("information", "pipeline #2: 2 jobs queued again") in notes)
        assert piped.bodies("/pipelines/2/retry") == [{"failed_only": False}, {"failed_only": True}]
        assert [piped.jobs[i].state for i in (12, 13, 14)] == ["success", "queued", "queued"]
        await select(pilot, table, 4)
        await pilot.press("r")
        assert notes[-1] == ("warning", "pipeline #4 is running: only a finished pipeline can be retried")
        await select(pilot, table, 1)
        await pilot.press("R")
        assert notes[-1] == ("warning", "pipeline #1 succeeded: it has no failed jobs to retry")
        assert len(piped.calls("POST", "/pipelines/2/retry")) == 2 and piped.calls("POST", "/pipelines/1/retry") == []


async def test_retry_from_the_screen_shows_the_new_pipeline(make_app: MakeApp, piped: FakeApi) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await open_pipeline(pilot, 2)
        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(app.screen, PipelineScreen) and app.screen.pipeline_id == 6
                         and app.screen.pipeline is not None, timeout=2.0, what="the new pipeline's screen")
        assert [j.state for j in app.screen.pipeline.jobs] == ["queued"] * 3  # type: ignore[attr-defined]
        await pilot.press("escape")
        assert not isinstance(app.screen, PipelineScreen)  # switched, not stacked


async def test_a_server_without_the_pipelines_api_is_said_in_the_panel(make_app: MakeApp,
                                                                       api: FakeApi) -> None:
    api.pipelines_missing = True
    app = make_app()
    notes = record_notifications(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("5")
        summary = app.query_one("#pipelines-summary", Static)
        await wait_until(pilot, lambda: "does not list pipelines" in str(summary.render()))
        assert notes == []


async def test_the_help_lists_the_pipeline_keys(make_app: MakeApp, api: FakeApi) -> None:
    app = make_app()
    sections = dict(app.help_sections())
    descriptions = {b.description for b in sections["Pipelines panel"]}  # type: ignore[union-attr]
    assert {"Open", "Cancel", "Retry", "Retry the failed jobs"} <= descriptions
    assert {"escape", "enter", "c", "r", "R"} <= {b.key for b in sections["Pipeline screen"]}  # type: ignore[union-attr]
    assert any(getattr(b, "key", "") == "5" for b in sections["Everywhere"])
