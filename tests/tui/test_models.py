"""The console's job arithmetic: how each kind of event changes a job it shows."""

from __future__ import annotations

from client.models import JobInfo, ServerEvent
from tests.client.fake_api import make_job
from tui.models import apply_event

SHA = "c0ffee" + "0" * 34


def info(**changes: object) -> JobInfo:
    return JobInfo.from_dict(make_job(7, **changes).to_dict())  # type: ignore[arg-type]


def test_a_sha_event_fills_in_the_commit_of_a_job_submitted_without_one() -> None:
    job = info(sha=None, state="running")
    assert apply_event(job, ServerEvent(7, "running", "sha", {"sha": SHA})).sha == SHA


def test_a_sha_event_never_replaces_a_commit_the_job_already_had() -> None:
    job = info(state="running")
    assert apply_event(job, ServerEvent(7, "running", "sha", {"sha": SHA})).sha == job.sha
