"""Phase timings of one `forgeci run` (`--timings`): every phase adds its wall time to the run's recorder.

The recorder travels in a context variable, so the executor and the engine time their phases without being handed
anything; tasks and threads started inside the run inherit it, and outside a timed run `phase()` costs a lookup.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TextIO

__all__ = ["Timings", "current", "note", "phase", "process_age"]

_CURRENT: ContextVar[Timings | None] = ContextVar("forgeci_timings", default=None)


class Timings:
    """Seconds per phase, in the order the phases first ran (a phase that runs twice adds up)."""

    def __init__(self, *, since_process_start: bool = False) -> None:
        self.phases: dict[str, float] = {}
        self.started = time.monotonic()
        self.notes: list[str] = []
        self.since_process_start = since_process_start  # the total counts from the process's start (the CLI)

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    def activate(self) -> None:
        _CURRENT.set(self)

    def report(self, out: TextIO, total: float | None = None) -> None:
        """One line per phase, then the total (wall time since `started` unless given)."""
        if total is None:
            total = process_age() if self.since_process_start else time.monotonic() - self.started
        out.write("timings (phases may contain others: the runtime holds the Podman service, a job its steps):\n")
        width = max((len(n) for n in self.phases), default=10)
        for name, seconds in self.phases.items():
            out.write(f"  {name:<{width}} {seconds * 1000:8.1f} ms\n")
        out.write(f"  {'total':<{width}} {total * 1000:8.1f} ms\n")
        for note in self.notes:
            out.write(f"  ({note})\n")
        out.flush()


def note(text: str) -> None:
    """A remark printed under the current run's timings (nothing when no run is timed)."""
    timings = _CURRENT.get()
    if timings is not None:
        timings.notes.append(text)


def current() -> Timings | None:
    return _CURRENT.get()


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the block as phase `name` of the current run (nothing when no run is timed)."""
    timings = _CURRENT.get()
    if timings is None:
        yield
        return
    start = time.monotonic()
    try:
        yield
    finally:
        timings.add(name, time.monotonic() - start)


def process_age() -> float:
    """Seconds since this process started (the interpreter's own start-up and imports included); 0.0 when the
    kernel does not say."""
    try:
        fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError):
        return 0.0
