"""The job screen: steps, cache, the live log (colours, resume after a break, search) and a 100,000-line log."""

from __future__ import annotations

from collections.abc import Callable

from textual.widgets import DataTable, Input, Static

from client.models import LogEntry
from tests.client.fake_api import NOW, FakeApi
from tests.tui.conftest import wait_until
from tui.app import ForgeciApp
from tui.panels import JobsPanel
from tui.screens import JobScreen
from tui.widgets import LogView


async def open_job(app: ForgeciApp, pilot: object, job_id: int) -> JobScreen:
    table = app.query_one(JobsPanel).table
    await wait_until(pilot, lambda: job_id in table.jobs)  # type: ignore[arg-type]
    table.move_cursor(row=table.get_row_index(str(job_id)))
    await pilot.press("enter")  # type: ignore[attr-defined]
    await wait_until(pilot, lambda: isinstance(app.screen, JobScreen))  # type: ignore[arg-type]
    assert isinstance(app.screen, JobScreen)
    return app.screen


def head(screen: JobScreen) -> str:
    return str(screen.query_one("#job-head", Static).render())


def log_texts(screen: JobScreen) -> list[str]:
    return [entry.text for entry in screen.query_one(LogView).entries]


async def test_the_job_screen_shows_steps_cache_and_the_finished_log(make_app: Callable[..., ForgeciApp],
                                                                      api: FakeApi) -> None:
    api.log(2, "installing", "\x1b[31mFAIL\x1b[0m test_login")
    api.end_log(2)
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_job(app, pilot, 2)
        await wait_until(pilot, lambda: screen.job is not None and screen.log_ended)
        text = head(screen)
        assert "#2" in text and "acme/app" in text and "feature/login" in text and "failure" in text
        assert "cache miss" in text and "step test failed with exit code 1" in text
        assert "snapshot snapshots/2.tar.zst (70.0 MB)" in text
        steps = screen.query_one("#steps", DataTable)
        assert [[str(c) for c in steps.get_row(k)] for k in ("0", "1")] == [
            ["1", "install", "success", "0", "19s"], ["2", "test", "failure", "1", "15s"]]
        assert log_texts(screen) == ["installing", "\x1b[31mFAIL\x1b[0m test_login"]
        assert "ended" in str(screen.query_one("#log-status", Static).render())
        # ANSI colours reach the screen: the rendered line carries a red style on "FAIL".
        view = screen.query_one(LogView)
        strip = view._render_entry(1, view.rich_style)
        styles = {seg.text: seg.style for seg in strip if seg.text.strip()}
        assert styles["FAIL"] is not None and styles["FAIL"].color is not None
        assert styles["FAIL"].color.number == 1  # ANSI red
        await pilot.press("escape")
        assert not isinstance(app.screen, JobScreen)


async def test_the_log_follows_live_and_resumes_after_a_break(make_app: Callable[..., ForgeciApp],
                                                              api: FakeApi) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_job(app, pilot, 3)
        await wait_until(pilot, lambda: len(log_texts(screen)) == 5, what="the log so far")
        assert "cache —" in head(screen) and "running" in head(screen)
        api.log(3, "live line 6")
        await wait_until(pilot, lambda: log_texts(screen)[-1:] == ["live line 6"], timeout=1.0)
        api.break_streams()  # the connection drops; lines written meanwhile must come after the resume
        api.log(3, "written while away 7", "written while away 8")
        await wait_until(pilot, lambda: len(log_texts(screen)) == 8, what="the resumed log")
        resumed = [r for r in api.calls("GET", "/jobs/logs") if r.headers.get("Last-Event-ID")]
        assert resumed and resumed[0].headers["Last-Event-ID"] == "6"
        assert log_texts(screen)[5:] == ["live line 6", "written while away 7", "written while away 8"]
        view = screen.query_one(LogView)
        assert view.following and view.scroll_y == view.max_scroll_y
        # The job's state and steps follow its events.
        api.set_state(3, "success", finished_at=NOW + 5)
        api.end_log(3)
        await wait_until(pilot, lambda: "success" in head(screen) and screen.log_ended, timeout=1.0)


async def test_search_with_slash_highlights_and_walks_matches(make_app: Callable[..., ForgeciApp],
                                                              api: FakeApi) -> None:
    api.log(1, *[f"line {i}" + (" needle" if i % 25 == 0 else "") for i in range(1, 201)])
    api.end_log(1)
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_job(app, pilot, 1)
        view = screen.query_one(LogView)
        await wait_until(pilot, lambda: view.line_count == 200 and screen.log_ended)
        await pilot.press("/")
        search = screen.query_one("#search", Input)
        assert search.display and search.has_focus
        await pilot.press(*"NEEDLE", "enter")
        assert not search.display
        assert view.matches == [24, 49, 74, 99, 124, 149, 174, 199]
        first = view.matches[view.current or 0]
        assert view.scroll_y <= first < view.scroll_y + view.scrollable_content_region.height
        assert "8 matches" in str(screen.query_one("#log-status", Static).render())
        assert first == 199  # searching starts from the top of the view: here the tail, where it was following
        await pilot.press("n")
        assert view.matches[view.current or 0] == 24  # wraps around
        await pilot.press("n")
        assert view.matches[view.current or 0] == 49
        await pilot.press("N", "N")
        assert view.matches[view.current or 0] == 199  # and back
        shown = view.matches[view.current or 0]
        assert view.scroll_y <= shown < view.scroll_y + view.scrollable_content_region.height
        strip = view._render_entry(shown, view.rich_style)
        assert any(seg.text == "needle" and seg.style and seg.style.bgcolor for seg in strip)
        await pilot.press("f")
        assert view.following and view.scroll_y == view.max_scroll_y


async def test_a_hundred_thousand_lines_render_only_what_is_visible(make_app: Callable[..., ForgeciApp],
                                                                    api: FakeApi) -> None:
    api.end_log(4)
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_job(app, pilot, 4)
        view = screen.query_one(LogView)
        rendered: list[int] = []
        original = view._render_entry

        def counting(index: int, base: object) -> object:
            rendered.append(index)
            return original(index, base)  # type: ignore[arg-type]

        view._render_entry = counting  # type: ignore[method-assign]
        view.push(LogEntry(n, "build", "stdout", f"\x1b[3{n % 8}mline {n}\x1b[0m") for n in range(1, 100_001))
        await wait_until(pilot, lambda: view.line_count == 100_000, what="100,000 lines")
        await pilot.pause()
        height = view.scrollable_content_region.height
        assert view.virtual_size.height == 100_000 and view.scroll_y == view.max_scroll_y
        assert 0 < len(rendered) <= 2 * height, f"{len(rendered)} lines rendered for a {height}-line view"
        rendered.clear()
        await pilot.press("home")
        await pilot.pause()
        assert view.scroll_y == 0 and not view.following
        await pilot.press("pagedown", "pagedown")
        await pilot.pause()
        assert len(rendered) <= 4 * height
        assert set(rendered) <= set(range(0, 4 * height))
        assert view.search("line 99999") == 1 and view.matches == [99_998]
