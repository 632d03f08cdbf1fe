"""The plan phase's rules on their own: the pipeline read, the branch filter, step selection, the resume check."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.errors import ConfigError
from config.pipeline import pipeline_from_dict
from runner.models import JobSpec, JobState, Outcome, SnapshotRecord
from runner.job_rules import (
    PIPELINE_FILE, invalid_pipeline, read_pipeline, resume_mismatch, select_steps, skipped,
)
from runner.retry import Resume

PIPELINE = pipeline_from_dict({"branches": ["main"], "steps": [{"name": "a", "run": "a"}, {"name": "b", "run": "b"}]},
                              "t")


def snapshot(failed_step_name: str) -> SnapshotRecord:
    return SnapshotRecord(1, "snapshots/1/x", "a" * 40, "img", JobState.failure, 1, failed_step_name, 1, "c", 0.0)


def test_the_submitted_pipeline_wins_and_a_missing_file_names_itself(tmp_path: Path) -> None:
    (tmp_path / PIPELINE_FILE).write_text('[[steps]]\nname = "from-file"\nrun = "true"\n')
    inline = JobSpec(repo="r", ref="main", pipeline={"steps": [{"name": "inline", "run": "true"}]})
    assert [s.name for s in read_pipeline(inline, tmp_path).steps] == ["inline"]
    assert [s.name for s in read_pipeline(JobSpec(repo="r", ref="main"), tmp_path).steps] == ["from-file"]
    with pytest.raises(ConfigError, match="no .forgeci.toml at its root"):
        read_pipeline(JobSpec(repo="r", ref="main"), tmp_path / "empty")


def test_an_invalid_pipeline_logs_every_issue_and_names_the_first() -> None:
    with pytest.raises(ConfigError) as caught:
        pipeline_from_dict({"steps": [], "nope": 1}, "p.toml")
    said: list[str] = []
    outcome = invalid_pipeline(caught.value, said.append)
    assert outcome.state is JobState.failure and len(said) == len(caught.value.issues) >= 2
    assert outcome.error == f"invalid pipeline: {caught.value.issues[0]} (+{len(said) - 1} more)"


def test_the_branch_filter_looks_at_a_pull_requests_target() -> None:
    assert skipped(JobSpec(repo="r", ref="main"), PIPELINE) is None
    assert skipped(JobSpec(repo="r", ref="dev"), PIPELINE) == "skipped: dev is not in the pipeline's branches ['main']"
    pr = JobSpec(repo="r", ref="refs/pull/4/head", event="pull_request", pr_number=4, base_ref="main")
    assert skipped(pr, PIPELINE) is None


def test_step_selection_and_the_resume_check() -> None:
    assert select_steps(PIPELINE, None) == PIPELINE.steps
    assert [s.name for s in select_steps(PIPELINE, "b")] == ["b"]  # type: ignore[union-attr]
    none = select_steps(PIPELINE, "c")
    assert isinstance(none, Outcome) and none.error == "no step named 'c' (steps: a, b)"
    assert resume_mismatch(PIPELINE.steps, Resume(1, 1), snapshot("b")) is None
    assert "is not 'b'" in (resume_mismatch(PIPELINE.steps, Resume(1, 0), snapshot("b")) or "")
    assert resume_mismatch(PIPELINE.steps, Resume(1, 2), snapshot("b")) is not None  # past the last step
