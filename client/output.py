"""How the CLI's client commands print times and tables (shared by the job and the pipeline commands)."""

from __future__ import annotations

import time
from typing import TextIO

from config.durations import format_duration


def duration(seconds: float | None) -> str:
    return "–" if seconds is None else format_duration(max(0.0, seconds))


def ago(ts: float | None) -> str:
    if ts is None:
        return "–"
    delta = max(0.0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{int(delta // size)}{unit} ago"
    return f"{int(delta)}s ago"


def table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)
