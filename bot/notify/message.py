"""What a notification says about a finished pipeline, gathered once from the queue and the logs, masked.

Every text that comes from a job (log lines, errors, the commit message) goes through the server's secret masker
(runner.environment.Secrets.masker, the one the executor masks job logs with) before it reaches a message.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runner.environment import Secrets
from runner.errors import JobNotFound
from runner.layout import DataLayout
from runner.logs import Masker, read_log
from runner.models import PipelineRecord, StepState
from runner.queue import Queue
from runner.repos import parse_repo

EMOJI = {"success": ":white_check_mark:", "fixed": ":white_check_mark:", "failure": ":x:", "error": ":warning:",
         "cancelled": ":no_entry_sign:"}
VERB = {"success": "succeeded", "fixed": "is fixed", "failure": "failed", "error": "ended in error",
        "cancelled": "was cancelled"}
MAX_LINE = 300  # characters of one quoted log line
MAX_FAILED = 10  # failed jobs described in one message


@dataclass(frozen=True)
class FailedJob:
    """A job that failed its pipeline: where it broke and what it printed last."""

    id: int
    name: str
    state: str
    step: str | None  # the first failing step; None when it broke outside a step (clone, image, timeout)
    exit_code: int | None
    error: str | None
    log: tuple[str, ...]  # the last lines of that step (or of the job), masked
    url: str


@dataclass(frozen=True)
class Message:
    """A finished pipeline, as every kind of notification tells it."""

    pipeline_id: int
    event: str  # success | failure | fixed | error | cancelled
    state: str  # the pipeline's own state
    repo: str  # owner/name
    repo_url: str
    branch: str
    ref: str
    sha: str
    pusher: str
    commit: str  # the first line of the commit message, masked
    url: str  # the pipeline's dashboard page
    duration: float | None
    finished_at: float | None
    error: str | None
    failed: tuple[FailedJob, ...] = ()
    jobs: Mapping[str, int] = field(default_factory=dict)  # job state -> count

    @property
    def title(self) -> str:
        return f"{self.repo} {self.branch}: pipeline #{self.pipeline_id} {VERB.get(self.event, self.event)}"

    @property
    def short_sha(self) -> str:
        return self.sha[:10]

    def to_dict(self) -> dict[str, Any]:
        """The webhook body's `pipeline` object (README, Notifications and badges)."""
        return {
            "id": self.pipeline_id, "state": self.state, "repo": self.repo, "repo_url": self.repo_url,
            "branch": self.branch, "ref": self.ref, "sha": self.sha, "pusher": self.pusher, "commit": self.commit,
            "url": self.url, "duration": self.duration, "finished_at": self.finished_at, "error": self.error,
            "jobs": dict(self.jobs),
            "failed_jobs": [{"id": f.id, "name": f.name, "state": f.state, "step": f.step, "exit_code": f.exit_code,
                             "error": f.error, "log": list(f.log), "url": f.url} for f in self.failed],
        }


def branch_of(ref: str) -> str:
    """The branch (or tag) a ref names: `refs/heads/main` -> `main`."""
    for prefix in ("refs/heads/", "refs/tags/"):
        if ref.startswith(prefix):
            return ref[len(prefix):]
    return ref


def masker_for(settings: Any, environ: Mapping[str, str]) -> Masker:
    """The masker job logs are written with: every configured secret and the git token."""
    return Secrets.resolve(settings, environ).masker()


def _clip(text: str) -> str:
    return text if len(text) <= MAX_LINE else text[:MAX_LINE] + "…"


def _log_tail(queue: Queue, layout: DataLayout, job_id: int, step: str | None, count: int,
              mask: Masker) -> tuple[str, ...]:
    if count <= 0:
        return ()
    tail: deque[str] = deque(maxlen=count)
    # Several coordinators: the job may have run on another one, whose lines are in the database (log_chunks).
    for line in queue.log_lines(job_id) or read_log(layout.log_file(job_id)):
        # A step's own output; forgeci's line about how it ended says what the message already says.
        if step is None or line.step == step and line.stream != "system":
            tail.append(_clip(mask.mask(line.text)))
    return tuple(tail)


def _failed_job(queue: Queue, layout: DataLayout, job_id: int, lines: int, mask: Masker, base: str) -> FailedJob:
    try:
        job = queue.get(job_id)
    except JobNotFound:
        return FailedJob(job_id, f"job {job_id}", "error", None, None, None, (), f"{base}/dashboard/jobs/{job_id}")
    step = next((s for s in job.steps if s.state in (StepState.failure, StepState.timeout)), None)
    return FailedJob(
        job.id, job.display or job.name or f"job {job.id}", job.state.value, step.name if step else None,
        step.exit_code if step else None, mask.mask(job.error) if job.error else None,
        _log_tail(queue, layout, job.id, step.name if step else None, lines, mask), f"{base}/dashboard/jobs/{job.id}")


def build_message(queue: Queue, layout: DataLayout, pipeline: PipelineRecord, event: str, *, public_url: str,
                  mask: Masker, log_lines: int) -> Message:
    """The message of a finished pipeline (blocking: reads the queue and the failed jobs' logs)."""
    base = public_url.rstrip("/")
    jobs = queue.pipeline_jobs(pipeline.id)
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.state.value] = counts.get(job.state.value, 0) + 1
    failed = tuple(_failed_job(queue, layout, job.id, log_lines, mask, base)
                   for job in [j for j in jobs if j.counts_as_failed][:MAX_FAILED])
    meta = pipeline.spec.meta
    address = parse_repo(pipeline.repo)
    commit = (meta.get("message") or "").strip().splitlines()
    return Message(
        pipeline_id=pipeline.id, event=event, state=pipeline.state.value, repo=address.slug or pipeline.repo,
        repo_url=address.url if not address.local else "", branch=branch_of(pipeline.ref), ref=pipeline.ref,
        sha=pipeline.sha or pipeline.spec.sha or "", pusher=meta.get("pusher") or meta.get("sender") or "",
        commit=_clip(mask.mask(commit[0])) if commit else "", url=f"{base}/dashboard/pipelines/{pipeline.id}",
        duration=pipeline.duration, finished_at=pipeline.finished_at,
        error=mask.mask(pipeline.error) if pipeline.error else None, failed=failed, jobs=counts)


def plain_text(message: Message) -> str:
    """The message as plain text (e-mail, and the fallback text of chat messages)."""
    lines = [message.title, "", f"Repository: {message.repo}", f"Branch:     {message.branch}",
             f"Commit:     {message.short_sha}" + (f" {message.commit}" if message.commit else "")]
    if message.pusher:
        lines.append(f"Pushed by:  {message.pusher}")
    if message.duration is not None:
        lines.append(f"Duration:   {message.duration:.0f}s")
    if message.error:
        lines += ["", f"Error: {message.error}"]
    for job in message.failed:
        where = f"step {job.step} (exit {job.exit_code})" if job.step else (job.error or job.state)
        lines += ["", f"{job.name}: {job.state} at {where}"]
        lines += [f"    {text}" for text in job.log]
    lines += ["", message.url]
    return "\n".join(lines) + "\n"
