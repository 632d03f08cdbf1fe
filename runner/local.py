"""`forgeci run`: a local checkout's pipeline on the same engine, printed to the terminal like `act`."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from config.durations import format_duration
from config.settings import Settings
from runner.executor import Outcome, StepResult
from runner.logs import LogLine
from runner.models import Job, JobSpec, JobState
from runner.runtime import open_runtime

COLOURS = {"success": "32", "failure": "31", "timeout": "33", "cancelled": "33", "skipped": "36", "error": "31"}


def _git(path: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


class TerminalReporter:
    """Step headers and log lines as they come, then a summary table."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.colour = out.isatty() and os.environ.get("NO_COLOR") is None

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def line(self, line: LogLine) -> None:
        if line.stream == "system":
            self.out.write(self.paint(f"== {line.text}", "1") + "\n")
        else:
            prefix = self.paint(f"[{line.step}]", "2")
            self.out.write(f"{prefix} {line.text}\n")
        self.out.flush()

    def checked_out(self, job: Job, sha: str) -> None:
        pass  # the summary names the working tree, not a commit

    def step_started(self, job: Job, index: int, name: str, total: int) -> None:
        pass  # the executor's own "step i/n" log line is the header

    def step_finished(self, job: Job, result: StepResult, total: int) -> None:
        pass

    def summary(self, outcome: Outcome) -> None:
        rows = [(r.name, str(r.state), format_duration(r.duration), "" if r.exit_code is None else str(r.exit_code))
                for r in outcome.steps]
        width = max([len("step")] + [len(r[0]) for r in rows])
        self.out.write("\n" + f"{'step':<{width}}  {'result':<9}  {'time':>9}  exit\n")
        for name, state, took, code in rows:
            self.out.write(f"{name:<{width}}  {self.paint(f'{state:<9}', COLOURS.get(state, '0'))}  {took:>9}  {code}\n")
        total = format_duration(sum(r.duration for r in outcome.steps))
        verdict = self.paint(str(outcome.state).upper(), COLOURS.get(str(outcome.state), "0"))
        self.out.write(f"\n{verdict} in {total}" + (f": {outcome.error}" if outcome.error else "") + "\n")
        self.out.flush()


LOCAL_RUNNER = "local"


async def run_local(
    settings: Settings, path: Path, *, step: str | None = None, environ: Mapping[str, str] = os.environ,
    out: TextIO = sys.stdout,
) -> Outcome:
    """Run the pipeline of the checkout at `path`, its working tree as it is; the job never enters a server's queue."""
    path = path.resolve()
    # A private data dir: a `forgeci serve` on the same machine must neither claim nor reap this job.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=settings.data_dir))
    local = dataclasses.replace(settings, data_dir=scratch)
    reporter = TerminalReporter(out)
    try:
        async with open_runtime(local, environ, workers=False) as runtime:
            spec = JobSpec(repo=str(path), ref=_git(path, "rev-parse", "--abbrev-ref", "HEAD") or "local",
                           sha=_git(path, "rev-parse", "HEAD") or None, event="local")
            job_id = await runtime.control.submit(spec)
            job = await runtime.control.claim(LOCAL_RUNNER, 3600.0)
            assert job is not None and job.id == job_id
            cancel = asyncio.Event()
            outcome = await runtime.executor.run(job, cancel, reporter, only_step=step, local_path=path,
                                                 on_line=reporter.line)
            # Nobody retries a local run: an infrastructure fault is its final word.
            final = dataclasses.replace(outcome, state=JobState.error, infra=False) if outcome.infra else outcome
            await runtime.control.record(job, final, LOCAL_RUNNER)
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)
    reporter.summary(outcome)
    return outcome
