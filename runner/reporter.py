"""Where a job's step progress goes (the worker's queue rows and events, or `forgeci run`'s terminal), and which
commit a prepared workspace holds."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

from runner.models import Job, StepResult


class StepReporter(Protocol):
    """Where step progress goes: the queue's step rows and the event bus (worker), or a terminal (`forgeci run`)."""

    def checked_out(self, job: Job, sha: str) -> None:
        """The workspace holds commit `sha` (for a job submitted without one: its ref's tip, now pinned)."""

    def step_started(self, job: Job, index: int, name: str, total: int) -> None: ...

    def step_finished(self, job: Job, result: StepResult, total: int) -> None: ...


class NullReporter:
    def checked_out(self, job: Job, sha: str) -> None:
        pass

    def step_started(self, job: Job, index: int, name: str, total: int) -> None:
        pass

    def step_finished(self, job: Job, result: StepResult, total: int) -> None:
        pass


def checked_out_sha(workspace: Path) -> str:
    """The detached HEAD of a prepared workspace ('' when it is not a git checkout)."""
    try:
        head = (workspace / ".git" / "HEAD").read_text().strip()
    except OSError:
        return ""
    return head if re.fullmatch(r"[0-9a-f]{40,64}", head) else ""
