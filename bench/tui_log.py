"""Benchmark of the console's log view at 100,000 lines against 1,000 lines and against Textual's RichLog.

`python bench/tui_log.py`: the time to take in the lines and to paint a screen after a jump, headless at 80x24.
The goal: painting a screen of a 100,000-line log costs about what it costs at 1,000 lines (the view is virtualized),
and taking in the lines costs less than RichLog, which renders every line as it is written.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository root, without installing

from rich.text import Text  # noqa: E402
from textual.app import App, ComposeResult  # noqa: E402
from textual.widget import Widget  # noqa: E402
from textual.widgets import RichLog  # noqa: E402

from client.models import LogEntry  # noqa: E402
from tui.widgets import LogView  # noqa: E402

GOAL_PAINT_RATIO = 2.0  # painting at 100,000 lines vs 1,000 lines
JUMPS = 50


def lines(n: int) -> list[LogEntry]:
    return [LogEntry(i, "test", "stdout", f"\x1b[3{i % 8}mline {i}\x1b[0m  ok  {'x' * (i % 40)}") for i in range(1, n + 1)]


class Bench(App[None]):
    def __init__(self, widget: Widget) -> None:
        super().__init__()
        self.widget = widget

    def compose(self) -> ComposeResult:
        yield self.widget


async def measure(kind: str, n: int) -> tuple[float, float]:
    """(seconds to take in n lines, seconds per screen painted after a jump), for one widget kind."""
    entries = lines(n)
    widget: Widget = LogView() if kind == "LogView" else RichLog(max_lines=None)
    app = Bench(widget)
    async with app.run_test(size=(80, 24)) as pilot:
        started = time.perf_counter()
        if isinstance(widget, LogView):
            widget.push(entries)
            widget.flush()
        else:
            assert isinstance(widget, RichLog)
            for entry in entries:
                widget.write(Text.from_ansi(entry.text))
        await pilot.pause()
        ingest = time.perf_counter() - started
        height = widget.scrollable_content_region.height
        started = time.perf_counter()
        for jump in range(JUMPS):
            widget.scroll_to(y=(jump * 7919) % max(1, n - height), animate=False, immediate=True)
            for y in range(height):  # what the compositor asks for after a jump
                widget.render_line(y)
        paint = (time.perf_counter() - started) / JUMPS
    return ingest, paint


async def run() -> int:
    small = await measure("LogView", 1_000)
    big = await measure("LogView", 100_000)
    rich = await measure("RichLog", 100_000)
    print(f"{'':24} {'take in':>10} {'paint a screen':>16}")
    print(f"{'LogView,   1,000 lines':24} {small[0]:9.3f}s {small[1] * 1000:14.2f}ms")
    print(f"{'LogView, 100,000 lines':24} {big[0]:9.3f}s {big[1] * 1000:14.2f}ms")
    print(f"{'RichLog, 100,000 lines':24} {rich[0]:9.3f}s {rich[1] * 1000:14.2f}ms")
    paint_ratio = big[1] / small[1]
    print(f"paint at 100,000 / at 1,000 lines: {paint_ratio:.2f}x (goal <= {GOAL_PAINT_RATIO}x)")
    print(f"take in, LogView / RichLog: {big[0] / rich[0]:.2f}x (goal < 1x)")
    return 0 if paint_ratio <= GOAL_PAINT_RATIO and big[0] < rich[0] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(run()))
