"""What panels and screens ask of the app: Textual messages that bubble up to it, so that none imports it."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from client.errors import ClientError
from client.models import JobInfo


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
class RequestFailed(Message):
    """A call to the server failed: the app tells the operator, and marks the connection when it is gone."""

    error: ClientError
