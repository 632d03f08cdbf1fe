"""The overview's chart as inline SVG: jobs per time slice stacked by outcome, and their average duration."""

from __future__ import annotations

import time
from html import escape

from config.durations import format_duration
from runner.models import RangeStats

WIDTH, HEIGHT = 960, 240
LEFT, RIGHT, TOP, BOTTOM = 44, 60, 18, 30
# Drawn bottom-up in this order; cancelled and skipped share the neutral colour.
SERIES = (("success", "ok"), ("failure", "fail"), ("timeout", "timeout"), ("error", "err"),
          ("cancelled", "muted"), ("skipped", "muted"))


def _nice(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above value (an axis maximum)."""
    if value <= 0:
        return 1.0
    step = 10 ** len(str(int(value))) / 10 if value >= 1 else 1.0
    for factor in (1, 2, 5, 10):
        if value <= step * factor:
            return step * factor
    return step * 10


def _clock(ts: float, range_name: str) -> str:
    local = time.localtime(ts)
    return time.strftime("%a %H:%M" if range_name == "week" else "%H:%M", local)


def render(stats: RangeStats, range_name: str) -> str:
    """The chart's SVG markup (escaped; safe to insert as is)."""
    buckets = stats.buckets
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / len(buckets)
    bar_w = max(1.0, slot * 0.72)
    max_jobs = _nice(max((b.total for b in buckets), default=0))
    durations = [b.avg_duration for b in buckets if b.avg_duration is not None]
    max_dur = _nice(max(durations, default=0.0))
    out = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
           f'aria-label="Jobs and average duration over the last {range_name}" xmlns="http://www.w3.org/2000/svg">']
    for i in range(5):  # grid and both axes' labels
        y = TOP + plot_h - plot_h * i / 4
        out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        jobs = max_jobs * i / 4
        out.append(f'<text class="axis" x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{jobs:g}</text>')
        if durations:
            out.append(f'<text class="axis dur" x="{WIDTH - RIGHT + 8}" y="{y + 4:.1f}">'
                       f'{escape(format_duration(max_dur * i / 4)) if i else "0"}</text>')
    for index, bucket in enumerate(buckets):
        x = LEFT + index * slot + (slot - bar_w) / 2
        base = TOP + plot_h
        tip = [f"{_clock(bucket.start, range_name)}–{_clock(bucket.start + stats.bucket_seconds, range_name)}: "
               f"{bucket.total} job{'s' if bucket.total != 1 else ''}"]
        for state, css in SERIES:
            count = bucket.states.get(state, 0)
            if not count:
                continue
            h = plot_h * count / max_jobs
            base -= h
            out.append(f'<rect class="bar {css}" x="{x:.1f}" y="{base:.1f}" width="{bar_w:.1f}" height="{h:.1f}"/>')
            tip.append(f"{count} {state}")
        if bucket.avg_duration is not None:
            tip.append(f"average {format_duration(bucket.avg_duration)}")
        if bucket.total:  # a full-height hover target carrying the tooltip
            out.append(f'<rect class="hit" x="{LEFT + index * slot:.1f}" y="{TOP}" width="{slot:.1f}" '
                       f'height="{plot_h}"><title>{escape(", ".join(tip))}</title></rect>')
    points = [(LEFT + (i + 0.5) * slot, TOP + plot_h - plot_h * b.avg_duration / max_dur)
              for i, b in enumerate(buckets) if b.avg_duration is not None]
    if len(points) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        out.append(f'<polyline class="line" points="{path}"/>')
    for x, y in points:
        out.append(f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="2.5"/>')
    ticks = 6
    for i in range(ticks + 1):
        ts = stats.since + (stats.until - stats.since) * i / ticks
        x = LEFT + plot_w * i / ticks
        anchor = "start" if i == 0 else "end" if i == ticks else "middle"
        out.append(f'<text class="axis" x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}">'
                   f'{escape(_clock(ts, range_name))}</text>')
    if not stats.total:
        out.append(f'<text class="empty" x="{LEFT + plot_w / 2}" y="{TOP + plot_h / 2}" text-anchor="middle">'
                   f'No job finished in the last {range_name}</text>')
    out.append("</svg>")
    return "".join(out)
