"""The console's submit form and inputs: a field per declared input once the repository and ref are typed, the
server's objection under the input it names, plain KEY=VALUE when the pipeline file is not known."""

from __future__ import annotations

from collections.abc import Callable

from textual.widgets import Input, Label

from tests.client.fake_api import FakeApi
from tests.tui.conftest import wait_until
from tui.app import ForgeciApp
from tui.panels import JobsPanel
from tui.screens import SubmitScreen

REPO = "https://github.com/acme/deploy.git"


async def test_declared_inputs_get_fields_and_the_server_s_objection_shows_under_one(
        make_app: Callable[..., ForgeciApp], api: FakeApi) -> None:
    api.declared[REPO] = {"target": {"description": "where to", "default": None, "choices": ["staging", "prod"],
                                     "required": True},
                          "level": {"description": "", "default": "info", "choices": [], "required": False}}
    app = make_app()
    async with app.run_test(size=(80, 40)) as pilot:
        await wait_until(pilot, lambda: app.query_one(JobsPanel).table.row_count == 6)
        await pilot.press("n")
        form = app.screen
        assert isinstance(form, SubmitScreen)
        form.query_one("#repo", Input).value = REPO
        form.query_one("#ref", Input).value = "main"
        form.query_one("#ref", Input).focus()
        form.query_one("#sha", Input).focus()  # leaving the ref asks the server what it declares
        await wait_until(pilot, lambda: bool(form.query("#input-target")), what="the declared fields")
        assert form.query_one("#input-level", Input).value == "info"
        assert form.query_one("#input-target", Input).placeholder == "one of staging, prod"

        form.query_one("#input-level", Input).focus()
        await pilot.press("enter")
        error = form.query_one("#input-target-error", Label)
        await wait_until(pilot, lambda: str(error.render()) == "required input missing", what="the objection")
        assert isinstance(app.screen, SubmitScreen)
        form.query_one("#input-target", Input).value = "prod"
        await pilot.press("enter")
        await wait_until(pilot, lambda: not isinstance(app.screen, SubmitScreen))
        assert api.bodies("/jobs/submit")[-1] == {"repo": REPO, "ref": "main",
                                                   "inputs": {"target": "prod", "level": "info"}}


async def test_an_unknown_pipeline_takes_plain_key_value_pairs(make_app: Callable[..., ForgeciApp],
                                                               api: FakeApi) -> None:
    app = make_app()
    async with app.run_test(size=(80, 40)) as pilot:
        await wait_until(pilot, lambda: app.query_one(JobsPanel).table.row_count == 6)
        await pilot.press("n")
        form = app.screen
        assert isinstance(form, SubmitScreen)
        form.query_one("#repo", Input).value = "https://github.com/acme/app.git"
        form.query_one("#ref", Input).value = "main"
        form.query_one("#ref", Input).focus()
        form.query_one("#inputs", Input).focus()
        await wait_until(pilot, lambda: any("not known yet" in str(label.render()) for label in form.query(Label)),
                         what="the note that the file is not known")
        plain = form.query_one("#inputs", Input)
        plain.value = 'A=1 B="two words" broken'
        plain.focus()
        await pilot.press("enter")
        assert "expected KEY=VALUE, got 'broken'" in str(form.query_one("#inputs-error", Label).render())
        assert api.calls("POST", "/jobs/submit") == []
        form.query_one("#inputs", Input).value = 'A=1 B="two words"'
        await pilot.press("enter")
        await wait_until(pilot, lambda: not isinstance(app.screen, SubmitScreen))
        assert api.bodies("/jobs/submit")[-1]["inputs"] == {"A": "1", "B": "two words"}
