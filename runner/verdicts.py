"""How a step's end decides its job's, and the job's last log line before the keep phase."""

from __future__ import annotations

import time

from config.durations import format_duration
from config.pipeline import Step
from runner.models import JobState, Outcome, StepResult, StepState


def step_verdict(result: StepResult, step: Step, deadline: float) -> tuple[JobState, str] | None:
    """The job's end a step's end makes (state, error), or None when the job goes on to the next step."""
    if result.state is StepState.cancelled:
        return JobState.cancelled, f"cancelled during step {step.name}"
    if result.state is StepState.timeout:
        limit = "the job's" if time.monotonic() >= deadline - 0.05 else "its"
        return JobState.timeout, f"step {step.name} exceeded {limit} time limit"
    if result.state is StepState.failure and not step.continue_on_error:
        return JobState.failure, f"step {step.name} failed (exit {result.exit_code})"
    return None


def summary(outcome: Outcome) -> str:
    """The job's last log line before the keep phase: its state, how many steps, how long they took."""
    total = sum(r.duration for r in outcome.steps)
    count = len(outcome.steps)
    return f"job {outcome.state} after {count} step{'s' if count != 1 else ''} in {format_duration(total)}"
