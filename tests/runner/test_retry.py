"""Retries: a plain retry, and a retry from the failed step that restores the snapshot and skips what already ran."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runner.errors import InvalidTransition, JobNotFound
from runner.logs import read_log
from runner.models import JobSpec, JobState, SnapshotRecord, StepState
from runner.queue import Queue
from runner.control import retry_spec
from runner.retry import RESUME_FROM, RESUME_STEP, RETRY_OF, Resume
from runner.runtime import Runtime
from runner.snapshot import restore_snapshot
from tests.runner.test_executor import log_text, submit, wait_terminal

MakeRepo = Callable[..., tuple[Path, str]]


def retry_job(queue: Queue, job_id: int, *, from_failed_step: bool = False) -> int:
    """A retry as JobControl.retry records it, without the event and the wake-up."""
    return queue.enqueue(retry_spec(queue, job_id, from_failed_step=from_failed_step))


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[Queue]:
    with Queue(tmp_path / "q.db") as q:
        yield q


def finished(queue: Queue, state: JobState, **meta: str) -> int:
    job_id = queue.enqueue(JobSpec(repo="https://h/a/b", ref="main", meta=meta))
    queue.claim("r", 60)
    queue.complete(job_id, state)
    return job_id


def snapshot_of(queue: Queue, job_id: int, failed_step: int | None = 1) -> SnapshotRecord:
    record = SnapshotRecord(job_id, f"snapshots/{job_id}/s/t.tar.zst", "f" * 40, "img", queue.get(job_id).state,
                            failed_step, "test" if failed_step is not None else None, 1, "c" * 64, 1.0)
    queue.put_snapshot(record)
    return record


def test_plain_retry(queue: Queue) -> None:
    job_id = finished(queue, JobState.success, pusher="ada")
    new = queue.get(retry_job(queue, job_id))
    assert new.state is JobState.queued and new.spec.meta == {"pusher": "ada", RETRY_OF: str(job_id)}
    with pytest.raises(InvalidTransition):
        retry_job(queue, new.id)  # still queued
    with pytest.raises(JobNotFound):
        retry_job(queue, 999)


def test_retry_from_the_failed_step_resumes_at_the_snapshot(queue: Queue) -> None:
    job_id = finished(queue, JobState.failure)
    snapshot_of(queue, job_id, failed_step=1)
    new = queue.get(retry_job(queue, job_id, from_failed_step=True))
    assert new.spec.sha == "f" * 40  # the snapshot's commit, even when the job followed a branch tip
    assert new.spec.meta == {RETRY_OF: str(job_id), RESUME_FROM: str(job_id), RESUME_STEP: "1"}
    assert Resume.of(new.spec.meta) == Resume(job_id, 1)
    # The retry fails again, later: its own retry resumes from its own snapshot.
    queue.claim("r", 60)
    queue.complete(new.id, JobState.timeout)
    record = snapshot_of(queue, new.id, failed_step=2)
    third = queue.get(retry_job(queue, new.id, from_failed_step=True))
    assert Resume.of(third.spec.meta) == Resume(new.id, 2) and record.job_id == new.id
    plain = queue.get(retry_job(queue, new.id))
    assert Resume.of(plain.spec.meta) is None and plain.spec.meta[RETRY_OF] == str(new.id)


@pytest.mark.parametrize("state", [JobState.success, JobState.cancelled, JobState.error, JobState.skipped])
def test_only_a_failed_job_resumes(queue: Queue, state: JobState) -> None:
    job_id = finished(queue, state)
    snapshot_of(queue, job_id)
    with pytest.raises(InvalidTransition, match="failed step"):
        retry_job(queue, job_id, from_failed_step=True)


def test_no_snapshot_or_no_failed_step(queue: Queue) -> None:
    job_id = finished(queue, JobState.failure)
    with pytest.raises(InvalidTransition, match="no workspace snapshot"):
        retry_job(queue, job_id, from_failed_step=True)
    snapshot_of(queue, job_id, failed_step=None)
    with pytest.raises(InvalidTransition, match="no failed step"):
        retry_job(queue, job_id, from_failed_step=True)


def test_malformed_resume_meta() -> None:
    assert Resume.of({"pusher": "x"}) is None
    for meta in ({RESUME_FROM: "x", RESUME_STEP: "1"}, {RESUME_FROM: "1"}, {RESUME_FROM: "1", RESUME_STEP: "-1"}):
        with pytest.raises(ValueError):
            Resume.of(meta)


COUNTER_PIPELINE = """
[[steps]]
name = "count"
run = "echo ran >> counter && echo private > subuid && chown 1000:1000 subuid && chmod 600 subuid"

[[steps]]
name = "flaky"
run = "test -f flag || { touch flag; exit 1; }"

[[steps]]
name = "after"
run = "echo after >> counter && cat subuid"
"""


@pytest.mark.slow
@pytest.mark.podman
async def test_retry_from_the_failed_step_end_to_end(runtime: Runtime, make_repo: MakeRepo) -> None:
    repo, sha = make_repo({".forgeci.toml": COUNTER_PIPELINE})
    first = await wait_terminal(runtime, submit(runtime, repo))
    assert first.state is JobState.failure
    assert [(s.name, s.state) for s in first.steps] == [("count", StepState.success), ("flaky", StepState.failure)]
    record = runtime.queue.snapshot(first.id)
    assert record is not None and (record.failed_step, record.failed_step_name, record.sha) == (1, "flaky", sha)

    retry_id = await runtime.control.retry(first.id, from_failed_step=True)
    retried = await wait_terminal(runtime, retry_id)
    text = log_text(runtime, retry_id)
    assert retried.state is JobState.success, text
    assert [(s.name, s.state) for s in retried.steps] == [
        ("count", StepState.restored), ("flaky", StepState.success), ("after", StepState.success)]
    assert "count restored from the snapshot of job" in text and "mirror" not in text  # no checkout
    # The first step did not run again: the counter holds its one line from the first job, then "after".
    final = runtime.queue.snapshot(retry_id)
    assert final is not None and final.state is JobState.success
    target = runtime.layout.workspaces / "check"
    target.mkdir()
    restore_snapshot(runtime.store, final, target, runtime.user, lambda _: None)
    assert (target / "counter").read_text() == "ran\nafter\n"
    # A file the job gave another uid (a subuid on the host, mode 600) was archived and came back the job's own.
    assert "private" in text and (target / "subuid").read_text() == "private\n"
    assert (target / "subuid").stat().st_uid == runtime.user.uid
    step_lines = [line.text for line in read_log(runtime.layout.log_file(retry_id)) if line.stream == "system"]
    assert any(line.startswith("snapshot: restored snapshots/") for line in step_lines)
