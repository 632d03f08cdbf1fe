"""What panels and screens ask of the app: Textual messages that bubble up to it, so that none imports it."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from client.errors import ClientError
from client.models import JobInfo, PipelineInfo


@dataclass
class OpenJob(Message):
    """Show this job on its own screen."""

    job_id: int


@dataclass
class CancelJob(Message):
    """Cancel this job, once the operator confirms."""

    job: JobInfo


@dataclass
class RetryJob(Message):
    """Run this finished job again, from its failed step if asked."""

    job: JobInfo
    from_failed_step: bool = False


@dataclass
class ChangePriority(Message):
    """Ask the operator for this queued job's new priority, and set it."""

    job: JobInfo


@dataclass
class OpenPipeline(Message):
    """Show this pipeline's jobs on their own screen."""

    pipeline_id: int


@dataclass
class CancelPipeline(Message):
    """Cancel this pipeline (its queued jobs, and stop its running ones), once the operator confirms."""

    pipeline: PipelineInfo


@dataclass
class RetryPipeline(Message):
    """Run this finished pipeline again: all of it as a new pipeline, or only its failed jobs in place."""

    pipeline: PipelineInfo
    failed_only: bool = False


@dataclass
class RequestFailed(Message):
    """A call to the server failed: the app tells the operator, and marks the connection when it is gone."""

    error: ClientError
