"""Pipelines written straight into the queue for the dashboard tests: a plan of named jobs, run by hand."""

from __future__ import annotations

from collections.abc import Sequence

from runner.models import JobSpec, JobState
from runner.queue import Queue
from runner.queue.pipelines import PlannedJobRow

REPO = "https://git.example.test/acme/app.git"
SHA = "c0ffee" + "0" * 34
PYTHONS = ("3.11", "3.12")
DBS = ("sqlite", "postgres", "mysql")
# lint -> test (a 2x3 matrix: six members) -> build: 8 jobs in 3 columns.
EIGHT = [("lint", "lint", ())] + [
    ("test", f"test (python={py}, db={db})", ("lint",)) for py in PYTHONS for db in DBS] + [("build", "build", ("test",))]
EIGHT_TOML = '''
[jobs.lint]
steps = [{ name = "ruff", run = "lint" }]
[jobs.test]
needs = ["lint"]
matrix = { python = ["3.11", "3.12"], db = ["sqlite", "postgres", "mysql"] }
fail_fast = false
steps = [{ name = "pytest", run = "pytest ${{ matrix.python }} ${{ matrix.db }}" }]
[jobs.build]
needs = ["test"]
steps = [{ name = "build", run = "build" }]
'''


def make_pipeline(queue: Queue, jobs: Sequence[tuple[str, str, tuple[str, ...]]] = EIGHT, *,
                  ref: str = "main") -> tuple[int, list[int]]:
    """A planned pipeline of (name, display, needs) jobs (matrices without fail_fast); its id and its jobs' ids in
    plan order."""
    spec = JobSpec(repo=REPO, ref=ref, sha=SHA)
    pipeline_id = queue.create_pipeline(spec)
    ids, _ = queue.write_plan(pipeline_id, SHA, [PlannedJobRow(spec, name, display, needs, fail_fast=False)
                                                 for name, display, needs in jobs])
    return pipeline_id, ids


def run(queue: Queue, job_id: int, state: JobState | str = JobState.success) -> None:
    """Claim exactly `job_id` (it must be next in line) and, for a terminal state, end it so."""
    claimed = queue.claim("test-runner", 60)
    assert claimed is not None and claimed.id == job_id, f"expected to claim job {job_id}, got {claimed}"
    queue.start_step(job_id, 0, "step")
    if JobState(state).is_terminal:
        queue.finish_step(job_id, 0, "success" if state == "success" else "failure", 0 if state == "success" else 1)
        queue.complete(job_id, state, runner_id="test-runner")
