"""Actions on jobs: cancel (confirmed), retry, retry from the failed step, priority, and the submit form."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from textual.widgets import Input, Label

from runner.models import JobState
from tests.client.fake_api import FakeApi
from tests.tui.conftest import record_notifications, wait_until
from tui.app import ForgeciApp
from tui.job_table import JobTable
from tui.panels import JobsPanel
from tui.screens import ConfirmScreen, JobScreen, PriorityScreen, SubmitScreen


async def select(app: ForgeciApp, pilot: object, job_id: int) -> JobTable:
    table = app.query_one(JobsPanel).table
    await wait_until(pilot, lambda: job_id in table.jobs)  # type: ignore[arg-type]
    table.move_cursor(row=table.get_row_index(str(job_id)))
    table.focus()
    return table


async def test_cancel_asks_first_and_only_yes_cancels(make_app: Callable[..., ForgeciApp], api: FakeApi) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        table = await select(app, pilot, 4)
        await pilot.press("c")
        assert isinstance(app.screen, ConfirmScreen) and "#4" in app.screen.question
        await pilot.press("n")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen) and api.calls("POST", "/jobs/cancel") == []
        await pilot.press("c", "y")
        await wait_until(pilot, lambda: api.bodies("/jobs/cancel") == [{"id": 4}])
        await wait_until(pilot, lambda: table.jobs[4].state == "cancelled", timeout=1.0)
        # A running job: the server stops it; meanwhile the row says it is being cancelled.
        await select(app, pilot, 3)
        await pilot.press("c", "y")
        await wait_until(pilot, lambda: table.jobs[3].cancel_requested, timeout=1.0)
        assert str(table.get_row("3")[4]) == "cancelling"


async def test_cancelling_a_finished_job_is_refused_without_a_request(make_app: Callable[..., ForgeciApp],
                                                                      api: FakeApi) -> None:
    app = make_app()
    notes = record_notifications(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await select(app, pilot, 1)
        await pilot.press("c")
        assert not isinstance(app.screen, ConfirmScreen)
        assert notes == [("warning", "job #1 is already success")]
        assert api.calls("POST", "/jobs/cancel") == []


async def test_retry_and_retry_from_the_failed_step(make_app: Callable[..., ForgeciApp], api: FakeApi) -> None:
    app = make_app()
    notes = record_notifications(app)
    async with app.run_test(size=(80, 24)) as pilot:
        table = await select(app, pilot, 2)
        await pilot.press("r")
        await wait_until(pilot, lambda: 7 in table.jobs, timeout=1.0, what="the retry in the list")
        await select(app, pilot, 2)
        await pilot.press("R")
        await wait_until(pilot, lambda: 8 in table.jobs, timeout=1.0)
        assert api.bodies("/jobs/retry") == [{"id": 2, "from_failed_step": False}, {"id": 2, "from_failed_step": True}]
        assert ("information", "job #7 queued: a retry of #2") in notes
        assert ("information", "job #8 queued: a retry of #2 from its failed step") in notes
        await select(app, pilot, 3)  # running: nothing to retry yet
        await pilot.press("r")
        assert notes[-1][0] == "warning" and len(api.calls("POST", "/jobs/retry")) == 2


async def test_retry_refused_by_the_server_is_a_notification(make_app: Callable[..., ForgeciApp],
                                                             api: FakeApi) -> None:
    app = make_app()
    notes = record_notifications(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await select(app, pilot, 2)
        api.jobs[2] = replace(api.jobs[2], state=JobState.running)  # retried elsewhere; the event is lost
        await pilot.press("r")
        await wait_until(pilot, lambda: any(s == "error" for s, _ in notes))
        assert "409 wrong state" in notes[-1][1]
        assert app.is_running


async def test_priority_is_checked_in_place_then_sent(make_app: Callable[..., ForgeciApp], api: FakeApi) -> None:
    app = make_app()
    notes = record_notifications(app)
    async with app.run_test(size=(80, 24)) as pilot:
        table = await select(app, pilot, 4)
        await pilot.press("p")
        assert isinstance(app.screen, PriorityScreen)
        field = app.screen.query_one("#priority", Input)
        assert field.value == "5"
        field.value = "42"
        await pilot.press("enter")
        assert isinstance(app.screen, PriorityScreen)
        assert "0..10" in str(app.screen.query_one("#priority-error", Label).render())
        assert api.calls("POST", "/jobs/priority") == []
        field.value = "9"
        await pilot.press("enter")
        await wait_until(pilot, lambda: api.bodies("/jobs/priority") == [{"id": 4, "priority": 9}])
        await wait_until(pilot, lambda: table.jobs[4].priority == 9, timeout=1.0)
        assert str(table.get_row("4")[5]) == "9"
        await select(app, pilot, 3)  # running: its priority no longer matters
        await pilot.press("p")
        assert not isinstance(app.screen, PriorityScreen) and notes[-1][0] == "warning"
        await select(app, pilot, 5)
        await pilot.press("p", "escape")
        assert not isinstance(app.screen, PriorityScreen) and len(api.calls("POST", "/jobs/priority")) == 1


async def test_the_submit_form_shows_problems_in_place(make_app: Callable[..., ForgeciApp], api: FakeApi) -> None:
    app = make_app()
    notes = record_notifications(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.query_one(JobsPanel).table.row_count == 6)
        await pilot.press("n")
        form = app.screen
        assert isinstance(form, SubmitScreen)

        def error(name: str) -> str:
            return str(form.query_one(f"#{name}-error", Label).render())

        await pilot.click("#ok")
        await pilot.pause()
        assert error("repo") == "required" and error("ref") == "required"
        form.query_one("#repo", Input).value = "https://example.org/other.git"
        form.query_one("#ref", Input).value = "main"
        form.query_one("#sha", Input).value = "xyz"
        form.query_one("#priority", Input).value = "11"
        form.query_one("#priority", Input).focus()
        await pilot.press("enter")  # in a field, enter submits too
        assert error("repo") == "" and "hexadecimal" in error("sha") and "0..10" in error("priority")
        assert api.calls("POST", "/jobs/submit") == []
        form.query_one("#sha", Input).value = "abcdef1"
        form.query_one("#priority", Input).value = "7"
        await pilot.press("enter")  # valid here, refused by the server: its words under the field they name
        await wait_until(pilot, lambda: error("repo") != "")
        assert error("repo") == "not a repository this server may clone"
        assert isinstance(app.screen, SubmitScreen)
        form.query_one("#repo", Input).value = "https://github.com/acme/app.git"
        form.query_one("#repo", Input).focus()
        await pilot.press("enter")
        await wait_until(pilot, lambda: not isinstance(app.screen, SubmitScreen))
        assert api.bodies("/jobs/submit")[-1] == {"repo": "https://github.com/acme/app.git", "ref": "main",
                                                   "sha": "abcdef1", "priority": 7}
        assert ("information", "job #7 submitted") in notes
        table = app.query_one(JobsPanel).table
        await wait_until(pilot, lambda: 7 in table.jobs, timeout=1.0, what="the submitted job in the list")
        await pilot.press("n", "escape")
        assert not isinstance(app.screen, SubmitScreen) and len(api.calls("POST", "/jobs/submit")) == 2


async def test_actions_from_the_job_screen(make_app: Callable[..., ForgeciApp], api: FakeApi) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await select(app, pilot, 5)
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, JobScreen) and app.screen.job is not None)
        await pilot.press("p")
        assert isinstance(app.screen, PriorityScreen)
        app.screen.query_one("#priority", Input).value = "2"
        await pilot.press("enter")
        await wait_until(pilot, lambda: api.bodies("/jobs/priority") == [{"id": 5, "priority": 2}])
        assert isinstance(app.screen, JobScreen)
        await wait_until(pilot, lambda: "priority 2" in str(app.screen.query_one("#job-head").render()), timeout=1.0)
        await pilot.press("c", "y")
        await wait_until(pilot, lambda: "cancelled" in str(app.screen.query_one("#job-head").render()), timeout=1.0)
        await pilot.press("R")
        await wait_until(pilot, lambda: api.bodies("/jobs/retry") == [{"id": 5, "from_failed_step": True}])


async def test_a_submit_still_planning_says_so(make_app: Callable[..., ForgeciApp], api: FakeApi) -> None:
    app = make_app()
    notes = record_notifications(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.query_one(JobsPanel).table.row_count == 6)
        await pilot.press("n")
        form = app.screen
        assert isinstance(form, SubmitScreen)
        form.query_one("#repo", Input).value = "https://github.com/acme/unreachable.git"  # its fetch fails: 202
        form.query_one("#ref", Input).value = "main"
        form.query_one("#ref", Input).focus()
        await pilot.press("enter")
        await wait_until(pilot, lambda: not isinstance(app.screen, SubmitScreen))
        assert ("warning", "pipeline #1 submitted, still planning: the server could not fetch its repository yet "
                           "and keeps trying") in notes
        assert app.query_one(JobsPanel).table.row_count == 6  # no job yet
