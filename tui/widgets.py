"""The console's own widgets: a virtualized, searchable log view and the connection status bar."""

from __future__ import annotations

import re
from collections.abc import Iterable

from rich.cells import cell_len
from rich.style import Style
from rich.text import Text
from textual.cache import LRUCache
from textual.geometry import Size
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Select, Static

from client.models import LogEntry
from tui import format as fmt

# CSI and OSC sequences and two-byte escapes: what Text.from_ansi understands or drops, for search and widths.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1a\x1c-\x1f\x7f]")  # everything but \t and ESC, which from_ansi handles
FLUSH_DELAY = 0.05  # seconds a burst of lines collects before one repaint: 100,000 lines are not 100,000 repaints
MATCH_STYLE = Style(bgcolor="yellow", color="black")
CURRENT_MATCH_STYLE = Style(bgcolor="bright_yellow", color="black", bold=True)
SYSTEM_STYLE = Style(color="cyan", italic=True)
STDERR_STYLE = Style(color="bright_red")


def plain(text: str) -> str:
    """The text a line shows: without ANSI sequences or control characters, tabs expanded."""
    return _CONTROL.sub("\ufffd", _ANSI.sub("", text)).expandtabs()


class LogView(ScrollView, can_focus=True):
    """A job's log with ANSI colours. Only the visible lines are ever rendered, so it holds 100,000 lines at ease.

    It follows the tail while scrolled to the end; scrolling up stops that, scrolling back to the end resumes it.
    """

    DEFAULT_CSS = """
    LogView { background: $surface; }
    LogView:focus { background-tint: $foreground 5%; }
    """

    following: reactive[bool] = reactive(True)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.entries: list[LogEntry] = []
        self._folded: list[str] = []  # lower-cased plain text, for search
        self._width = 0
        self._pending: list[LogEntry] = []
        self._flush_scheduled = False
        self._strips: LRUCache[int, Strip] = LRUCache(1024)
        self.term = ""
        self.matches: list[int] = []  # line indexes that contain the term
        self.current: int | None = None  # index into matches

    # -- content --------------------------------------------------------------------------------------

    def push(self, entries: Iterable[LogEntry]) -> None:
        """Add lines; they appear within FLUSH_DELAY, together with any others that arrive meanwhile."""
        self._pending.extend(entries)
        if self._pending and not self._flush_scheduled:
            self._flush_scheduled = True
            self.set_timer(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        """Show the pending lines now."""
        self._flush_scheduled = False
        if not self._pending:
            return
        new, self._pending = self._pending, []
        start = len(self.entries)
        self.entries.extend(new)
        width = self._width
        folded = self._folded
        term = self.term
        for offset, entry in enumerate(new):
            text = plain(entry.text)
            width = max(width, cell_len(text))
            low = text.lower()
            folded.append(low)
            if term and term in low:
                self.matches.append(start + offset)
        self._width = width
        self.virtual_size = Size(width, len(self.entries))
        if self.following:
            self.scroll_end(animate=False, x_axis=False)  # after the layout knows the new size
        self.refresh()

    def clear(self) -> None:
        self.entries.clear()
        self._folded.clear()
        self._pending.clear()
        self._strips.clear()
        self.matches.clear()
        self.current = None
        self._width = 0
        self.virtual_size = Size(0, 0)
        self.refresh()

    @property
    def line_count(self) -> int:
        return len(self.entries)

    # -- following and search -------------------------------------------------------------------------

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if round(new) >= self.max_scroll_y:
            self.following = True
        elif new < old:
            self.following = False

    def follow(self) -> None:
        """Jump to the newest line and keep following."""
        self.following = True
        self.scroll_end(animate=False, x_axis=False)  # after the layout knows the new size

    # Jumps without animation: an animated scroll across 100,000 lines renders every page on the way.
    def action_scroll_home(self) -> None:
        self.scroll_home(animate=False, x_axis=self.scroll_y == 0)

    def action_scroll_end(self) -> None:
        self.follow()

    def action_page_down(self) -> None:
        self.scroll_page_down(animate=False)

    def action_page_up(self) -> None:
        self.scroll_page_up(animate=False)

    def search(self, term: str) -> int:
        """Highlight `term` (case-insensitive) and go to its first match from the top of the view; the count."""
        self.flush()
        self.term = term.lower()
        self._strips.clear()
        self.matches = [i for i, low in enumerate(self._folded) if self.term in low] if self.term else []
        self.current = None
        if self.matches:
            top = round(self.scroll_y)
            self._goto(next((k for k, i in enumerate(self.matches) if i >= top), 0))
        self.refresh()
        return len(self.matches)

    def next_match(self, backward: bool = False) -> int | None:
        """Go to the next (or previous) match, wrapping around; the line index, None without matches."""
        if not self.matches:
            return None
        if self.current is None:
            k = 0 if not backward else len(self.matches) - 1
        else:
            k = (self.current + (-1 if backward else 1)) % len(self.matches)
        self._goto(k)
        return self.matches[k]

    def _goto(self, k: int) -> None:
        self.current = k
        line = self.matches[k]
        self.following = False
        self._strips.clear()
        self.scroll_to(y=max(0, line - self.scrollable_content_region.height // 2), animate=False, immediate=True)
        self.refresh()

    # -- rendering ------------------------------------------------------------------------------------

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        width = self.scrollable_content_region.width
        base = self.rich_style
        if index >= len(self.entries):
            return Strip.blank(width, base)
        strip = self._strips.get(index)
        if strip is None:
            strip = self._render_entry(index, base)
            self._strips[index] = strip
        return strip.crop_extend(scroll_x, scroll_x + width, base).apply_offsets(scroll_x, index)

    def _render_entry(self, index: int, base: Style) -> Strip:
        entry = self.entries[index]
        text = Text.from_ansi(_CONTROL.sub("\ufffd", entry.text).expandtabs(), no_wrap=True, end="")
        if entry.stream == "system":
            text.stylize(SYSTEM_STYLE)
        elif entry.stream == "stderr" and not text.spans:
            text.stylize(STDERR_STYLE)
        if self.term and self.term in self._folded[index]:
            current = self.current is not None and self.matches[self.current] == index
            style = CURRENT_MATCH_STYLE if current else MATCH_STYLE
            low, start = text.plain.lower(), 0
            while (found := low.find(self.term, start)) >= 0:
                text.stylize(style, found, found + len(self.term))
                start = found + len(self.term)
        text.stylize_before(base)
        return Strip(text.render(self.app.console), text.cell_len)


class StatusBar(Static):
    """One line: the server, whether the console is connected to it, and the last problem."""

    DEFAULT_CSS = """
    StatusBar { height: 1; dock: top; background: $panel; color: $foreground; padding: 0 1; }
    """

    def __init__(self, server: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.server = server

    def on_mount(self) -> None:
        self.watch(self.app, "connection", self._show, init=True)

    def _show(self, connection: str) -> None:
        marks = {"online": ("●", "green", "live"), "connecting": ("○", "yellow", "connecting"),
                 "offline": ("✕", "bold red", "unreachable, reconnecting"),
                 "unauthorized": ("✕", "bold red", "token refused, retrying")}
        mark, style, label = marks.get(connection, ("?", "", connection))
        text = Text.assemble(("forgeci ", "bold"), (self.server, "underline"), "  ", (f"{mark} {label}", style))
        self.update(text)


class RepoSelect(Select[str]):
    """The repository filter of a list: its options grow with the repositories the list has shown."""

    def __init__(self, *, id: str) -> None:
        super().__init__([], prompt="all repositories", compact=True, id=id)
        self.known: set[str] = set()

    def learn(self, repos: Iterable[str]) -> None:
        """Offer the repositories not yet offered, keeping the choice, without a Changed (nothing changed)."""
        new = set(repos) - self.known
        if not new:
            return
        self.known |= new
        with self.prevent(Select.Changed):
            value = self.value
            self.set_options([(fmt.short_repo(r), r) for r in sorted(self.known)])
            if isinstance(value, str):
                self.value = value
