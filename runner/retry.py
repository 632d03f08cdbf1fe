"""How a retry is recorded in a job's meta (runner.control makes retries), and how a resumed one starts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runner.errors import ArchiveError, CorruptArchive, ObjectMissing, QueueError, StoreError, UnsafeArchive
from runner.models import Job, JobState, Outcome, SnapshotRecord

if TYPE_CHECKING:  # the snapshot and workspace modules import much more than a retry's meta needs
    from runner.snapshot import Snapshots
    from runner.workspace import Workspaces

Say = Callable[[str], None]

RETRY_OF = "retry_of"  # meta: the job this one retries
RESUME_FROM = "resume_from_job"  # meta: the job whose workspace snapshot this one starts from
RESUME_STEP = "resume_step"  # meta: index of the first step to run; the ones before it are `restored`
RESUMABLE = frozenset({JobState.failure, JobState.timeout})


@dataclass(frozen=True)
class Resume:
    """Where a retry from the failed step starts: the snapshot of job `job_id`, at step `step`."""

    job_id: int
    step: int

    @classmethod
    def of(cls, meta: Mapping[str, str]) -> Resume | None:
        """The resume point a job's meta names; None for an ordinary job. ValueError when the meta is malformed."""
        if RESUME_FROM not in meta and RESUME_STEP not in meta:
            return None
        try:
            job_id, step = int(meta[RESUME_FROM]), int(meta[RESUME_STEP])
        except (KeyError, ValueError):
            raise ValueError(f"malformed retry meta {RESUME_FROM}={meta.get(RESUME_FROM)!r} "
                             f"{RESUME_STEP}={meta.get(RESUME_STEP)!r}") from None
        if job_id < 1 or step < 0:
            raise ValueError(f"malformed retry meta {RESUME_FROM}={job_id} {RESUME_STEP}={step}")
        return cls(job_id, step)


async def resume_workspace(
    snapshots: Snapshots | None, workspaces: Workspaces, job: Job, resume: Resume, say: Say, abort: threading.Event,
) -> tuple[Path, SnapshotRecord] | Outcome:
    """A fresh workspace for `job` holding the snapshot of job `resume.job_id` (a retry from the failed step), or
    the Outcome that ends the job when there is none to restore."""
    if snapshots is None:
        return Outcome(JobState.failure, "this runner keeps no snapshots; retry without --from-failed-step")
    try:
        record = await asyncio.to_thread(snapshots.queue.snapshot, resume.job_id)
    except QueueError as exc:
        return Outcome(JobState.error, f"cannot read the snapshot index: {exc}", infra=True)
    if record is None or record.failed_step != resume.step:
        return Outcome(JobState.failure, f"job {resume.job_id} has no snapshot to resume from (pruned?); "
                                         f"retry it without --from-failed-step")
    workspace = workspaces.path(job.id)
    await workspaces.remove(job.id)
    try:
        workspace.mkdir(mode=0o755)
        workspaces.user.chown(workspace)
        await asyncio.to_thread(snapshots.restore, record, workspace, say, abort)
    except ObjectMissing:
        return Outcome(JobState.failure, f"the snapshot of job {resume.job_id} is gone from the store; "
                                         f"retry it without --from-failed-step")
    except (CorruptArchive, UnsafeArchive) as exc:
        return Outcome(JobState.failure, f"the snapshot of job {resume.job_id} cannot be restored: {exc}")
    except (StoreError, ArchiveError, OSError) as exc:  # the store or the disk: worth retrying later
        return Outcome(JobState.error, f"cannot restore the snapshot of job {resume.job_id}: {exc}", infra=True)
    return workspace, record
