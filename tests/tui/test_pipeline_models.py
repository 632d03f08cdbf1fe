"""The console's pipeline arithmetic: a pipeline's job moved by job events, and the pipeline a job event names."""

from __future__ import annotations

from client.models import PipelineJob, ServerEvent
from tui.models import apply_job_event, pipeline_named


def test_a_job_event_names_its_pipeline_or_none() -> None:
    assert pipeline_named(ServerEvent(4, "queued", data={"pipeline": 3})) == 3
    assert pipeline_named(ServerEvent(4, "queued", data={"pipeline": True})) is None
    assert pipeline_named(ServerEvent(4, "queued")) is None


def test_job_events_move_a_pipelines_job() -> None:
    job = PipelineJob(1, "test", "test", "queued", ("lint",), 1, waiting=True, wait_reason="waits for lint")
    assert apply_job_event(job, ServerEvent(1, "queued", "ready")).waiting is False
    running = apply_job_event(job, ServerEvent(1, "running", data={"attempts": 1}, t=100.0))
    assert (running.state, running.started_at, running.wait_reason, running.attempts) == ("running", 100.0, None, 1)
    failed = apply_job_event(running, ServerEvent(1, "failure", data={"error": "exit 1"}, t=130.0))
    assert (failed.state, failed.duration, failed.error) == ("failure", 30.0, "exit 1")
    assert apply_job_event(running, ServerEvent(1, "running", "cancel_requested")).cancel_requested
