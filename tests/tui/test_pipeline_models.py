"""The console's pipeline values: lenient parsing, depths from needs, pipeline events told from job events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from client.errors import BadResponse
from client.models import ServerEvent
from tui.pipeline_api import (
    Pipeline, PipelineEvent, PipelineJob, PipelinePage, Retried, apply_job_event, as_pipeline_event, pipeline_named,
    with_depths,
)


def test_a_pipeline_reads_the_lists_and_the_single_answer() -> None:
    listed = {"id": 7, "repo": "https://github.com/acme/app.git", "ref": "refs/heads/main", "sha": "ab" * 20,
              "event": "push", "state": "running", "created_at": 10.0, "started_at": 11, "finished_at": None,
              "error": None, "job_ids": [1, 2, True, "3"], "jobs_total": 2, "jobs_done": 1, "duration": None,
              "spec": {"repo": "ignored"}, "unknown": "ignored"}
    pipeline = Pipeline.from_dict(listed)
    assert (pipeline.id, pipeline.repo, pipeline.job_ids, pipeline.jobs_done, pipeline.started_at) == \
        (7, "https://github.com/acme/app.git", (1, 2), 1, 11.0)
    assert not pipeline.terminal and pipeline.jobs == ()
    one = Pipeline.from_dict({**listed, "jobs": [
        {"id": 1, "name": "lint", "display": "lint", "needs": [], "state": "success", "depth": 0, "duration": 3},
        {"id": 2, "name": "test", "display": None, "needs": ["lint"], "state": "queued", "waiting": True,
         "wait_reason": "waits for lint", "depth": 1}]})
    assert [(j.display, j.depth, j.wait_reason) for j in one.jobs] == [("lint", 0, None), ("test", 1, "waits for lint")]
    # An older answer: the trigger in `spec` only, no progress counts.
    old = Pipeline.from_dict({"id": 1, "state": "queued", "job_ids": [4], "spec": {"repo": "r", "ref": "main"}})
    assert (old.repo, old.ref, old.jobs_total) == ("r", "main", 1)


@pytest.mark.parametrize("bad", [[], {"state": "queued"}, {"id": "1", "state": "queued"}, {"id": 1}])
def test_a_pipeline_without_an_id_and_a_state_is_a_bad_response(bad: Any) -> None:
    with pytest.raises(BadResponse):
        Pipeline.from_dict(bad)
    with pytest.raises(BadResponse):
        PipelinePage.from_dict({"next_cursor": None})


def test_depths_are_worked_out_from_needs_when_the_server_leaves_them_out() -> None:
    jobs = [PipelineJob(1, "a", "a", "success", depth=-1), PipelineJob(2, "b", "b", "queued", ("a",), depth=-1),
            PipelineJob(3, "c", "c (x=1)", "queued", ("a",), depth=-1),
            PipelineJob(4, "c", "c (x=2)", "queued", ("a",), depth=-1),
            PipelineJob(5, "d", "d", "queued", ("b", "c", "nowhere"), depth=-1)]
    assert [j.depth for j in with_depths(jobs)] == [0, 1, 1, 1, 2]
    loop = [PipelineJob(1, "x", "x", "queued", ("y",), depth=-1), PipelineJob(2, "y", "y", "queued", ("x",), depth=-1)]
    assert sorted(j.depth for j in with_depths(loop)) == [0, 1]  # a cycle the planner refuses cannot hang the view


@dataclass(frozen=True)
class OtherPipelineEvent:
    pipeline_id: int
    state: str
    kind: str = "pipeline"
    data: dict[str, Any] = field(default_factory=dict)
    t: float = 5.0


def test_pipeline_events_are_told_from_job_events_by_what_they_carry() -> None:
    assert as_pipeline_event(OtherPipelineEvent(3, "failure", data={"x": 1})) == \
        PipelineEvent(3, "failure", "pipeline", {"x": 1}, 5.0)
    assert as_pipeline_event(ServerEvent(4, "queued", data={"pipeline": 3})) is None
    assert pipeline_named(ServerEvent(4, "queued", data={"pipeline": 3})) == 3
    assert pipeline_named(ServerEvent(4, "queued")) is None


def test_a_retry_answer_names_the_pipeline_that_runs() -> None:
    assert Retried.from_dict({"pipeline": 9, "jobs": [10, 11], "retry_of": 2}, 2) == Retried(9, (10, 11))
    assert Retried.from_dict({"pipeline": {"id": 2}, "jobs": [{"id": 5}]}, 2) == Retried(2, (5,))
    assert Retried.from_dict({"planning": True}, 2) == Retried(2, ())


def test_job_events_move_a_pipelines_job() -> None:
    job = PipelineJob(1, "test", "test", "queued", ("lint",), 1, waiting=True, wait_reason="waits for lint")
    assert apply_job_event(job, ServerEvent(1, "queued", "ready")).waiting is False
    running = apply_job_event(job, ServerEvent(1, "running", data={"attempts": 1}, t=100.0))
    assert (running.state, running.started_at, running.wait_reason, running.attempts) == ("running", 100.0, None, 1)
    failed = apply_job_event(running, ServerEvent(1, "failure", data={"error": "exit 1"}, t=130.0))
    assert (failed.state, failed.duration, failed.error) == ("failure", 30.0, "exit 1")
    assert apply_job_event(running, ServerEvent(1, "running", "cancel_requested")).cancel_requested
