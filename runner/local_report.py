"""What `forgeci run` prints: log lines as they come (prefixed with their job in a pipeline of many), a summary."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from config.durations import format_duration
from runner.logs import LogLine
from runner.models import Job, JobState, PipelineState, StepResult

COLOURS = {"success": "32", "failure": "31", "timeout": "33", "cancelled": "33", "skipped": "36", "error": "31"}
# Job prefixes cycle through these, as docker compose colours its services (never red: red means failure).
PREFIX_COLOURS = ("36", "33", "32", "35", "34", "96", "93", "92", "95", "94")
ENDED_BADLY = frozenset({JobState.failure, JobState.timeout, JobState.error, JobState.cancelled})


@dataclass(frozen=True)
class LocalJob:
    """One job of a local run as it ended: its state, why, how long, and its steps (none when it never ran)."""

    display: str
    state: JobState
    error: str | None
    duration: float | None
    steps: tuple[StepResult, ...] = ()


class Terminal:
    """The output stream, coloured only for a terminal that wants colours."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.colour = out.isatty() and os.environ.get("NO_COLOR") is None

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


class JobPrinter:
    """One job's log lines on the terminal (a StepReporter too: the executor's own lines are its step headers).
    With a prefix, each line starts with the job's display name, so that parallel jobs' lines can be told apart."""

    def __init__(self, terminal: Terminal, prefix: str = "", colour: str = "0") -> None:
        self.terminal = terminal
        self.prefix = terminal.paint(f"[{prefix}]", colour) + " " if prefix else ""

    def line(self, line: LogLine) -> None:
        paint = self.terminal.paint
        if line.stream == "system":
            text = paint(f"== {line.text}", "1")
        else:
            text = f"{paint(f'[{line.step}]', '2')} {line.text}"
        self.terminal.write(f"{self.prefix}{text}\n")  # one write per line: parallel jobs never split a line

    def checked_out(self, job: Job, sha: str) -> None:
        pass  # the summary names the working tree, not a commit

    def step_started(self, job: Job, index: int, name: str, total: int) -> None:
        pass  # the executor's own "step i/n" log line is the header

    def step_finished(self, job: Job, result: StepResult, total: int) -> None:
        pass


class Printers:
    """A JobPrinter per job: unprefixed for a pipeline of one job (as `forgeci run` always printed), else prefixed
    with the job's display name in a colour of its own."""

    def __init__(self, terminal: Terminal, *, prefixed: bool) -> None:
        self.terminal = terminal
        self.prefixed = prefixed
        self._colours: dict[str, str] = {}

    def __call__(self, job: Job) -> JobPrinter:
        display = job.display or job.name or str(job.id)
        if not self.prefixed:
            return JobPrinter(self.terminal)
        colour = self._colours.setdefault(display, PREFIX_COLOURS[len(self._colours) % len(PREFIX_COLOURS)])
        return JobPrinter(self.terminal, display, colour)


def _took(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(seconds)


def one_job_summary(terminal: Terminal, job: LocalJob) -> None:
    """The step table and verdict of a pipeline of one job, exactly as `forgeci run` printed them before jobs."""
    paint = terminal.paint
    rows = [(r.name, str(r.state), format_duration(r.duration), "" if r.exit_code is None else str(r.exit_code))
            for r in job.steps]
    width = max([len("step")] + [len(r[0]) for r in rows])
    lines = ["", f"{'step':<{width}}  {'result':<9}  {'time':>9}  exit"]
    for name, state, took, code in rows:
        lines.append(f"{name:<{width}}  {paint(f'{state:<9}', COLOURS.get(state, '0'))}  {took:>9}  {code}")
    total = format_duration(sum(r.duration for r in job.steps))
    verdict = paint(str(job.state).upper(), COLOURS.get(str(job.state), "0"))
    lines += ["", f"{verdict} in {total}" + (f": {job.error}" if job.error else "")]
    terminal.write("\n".join(lines) + "\n")


def pipeline_summary(terminal: Terminal, state: PipelineState, jobs: Sequence[LocalJob], took: float) -> None:
    """Every job (display name, state, duration, why it ended so) with its steps under it, then the verdict."""
    paint = terminal.paint
    width = max([len("job / step")] + [len(j.display) for j in jobs] + [len(s.name) + 2 for j in jobs for s in j.steps])
    lines = ["", f"{'job / step':<{width}}  {'result':<9}  {'time':>9}  exit / why"]
    for job in jobs:
        state_text = paint(f"{job.state:<9}", COLOURS.get(str(job.state), "0"))
        lines.append(f"{job.display:<{width}}  {state_text}  {_took(job.duration):>9}  {job.error or ''}".rstrip())
        for step in job.steps:
            step_text = paint(f"{step.state:<9}", COLOURS.get(str(step.state), "0"))
            code = "" if step.exit_code is None else str(step.exit_code)
            lines.append(f"  {step.name:<{width - 2}}  {step_text}  {format_duration(step.duration):>9}  {code}"
                         .rstrip())
    failed = [f"{j.display} {j.state}" for j in jobs if j.state in ENDED_BADLY]
    verdict = paint(str(state).upper(), COLOURS.get(str(state), "0"))
    lines += ["", f"{verdict} in {format_duration(took)}: {len(jobs)} job{'s' if len(jobs) != 1 else ''}"
              + (f"; {', '.join(failed)}" if failed else "")]
    terminal.write("\n".join(lines) + "\n")
