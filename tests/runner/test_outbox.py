"""The notifications outbox: a pipeline's end is written with it, `fixed` is the first success after a failure on
the same repository and branch, and fan-out, attempts, retries and drops keep each message exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.models import JobSpec, JobState
from runner.queue import PlannedJobRow, Queue
from tests.postgres import raw_sql

REPO = "https://github.com/acme/app.git"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(tmp_path: Path, clock: Clock) -> Queue:
    return Queue(tmp_path / "queue.db", clock=clock)


def run(queue: Queue, state: JobState, ref: str = "refs/heads/main", repo: str = REPO) -> int:
    spec = JobSpec(repo=repo, ref=ref, event="push", sha="b" * 40)
    pipeline_id = queue.create_pipeline(spec)
    queue.write_plan(pipeline_id, "b" * 40, [PlannedJobRow(spec, "build", "build")])
    job = queue.claim("r", 60)
    assert job is not None
    queue.complete(job.id, state, runner_id="r")
    return pipeline_id


def events(queue: Queue, pipeline_id: int) -> list[tuple[str | None, str, str]]:
    return [(row.target, row.event, state) for row, state in queue.notifications_of(pipeline_id)]


def test_the_end_of_a_pipeline_writes_one_row_and_fixed_follows_the_branch(queue: Queue) -> None:
    failed = run(queue, JobState.failure)
    assert events(queue, failed) == [(None, "failure", "pending")]
    other_branch = run(queue, JobState.success, ref="refs/heads/dev")
    assert events(queue, other_branch) == [(None, "success", "pending")]  # dev never failed
    cancelled = run(queue, JobState.cancelled)
    assert events(queue, cancelled) == [(None, "cancelled", "pending")]
    fixed = run(queue, JobState.success)  # the cancelled one in between does not count
    assert events(queue, fixed) == [(None, "fixed", "pending")]
    again = run(queue, JobState.success)
    assert events(queue, again) == [(None, "success", "pending")]
    other_repo = run(queue, JobState.success, repo="https://github.com/acme/web.git")
    assert events(queue, other_repo) == [(None, "success", "pending")]


def test_a_retried_pipeline_that_succeeds_is_fixed(queue: Queue) -> None:
    run(queue, JobState.success)
    failed = run(queue, JobState.failure)
    queue.retry_failed(failed)
    job = queue.claim("r", 60)
    assert job is not None
    queue.complete(job.id, JobState.success, runner_id="r")
    assert [event for _, event, _ in events(queue, failed)] == ["failure", "fixed"]


def test_planning_that_fails_for_good_and_a_cancel_while_planning_are_ends_too(queue: Queue) -> None:
    broken = queue.create_pipeline(JobSpec(repo=REPO, ref="refs/heads/main"))
    queue.plan_failed(broken, "cannot fetch", retry_in=5.0)
    assert events(queue, broken) == []  # it will plan again
    queue.plan_failed(broken, "cannot fetch", retry_in=None)
    assert events(queue, broken) == [(None, "error", "pending")]
    stopped = queue.create_pipeline(JobSpec(repo=REPO, ref="refs/heads/main"))
    queue.cancel_pipeline(stopped)
    assert events(queue, stopped) == [(None, "cancelled", "pending")]


def refuse_outbox_rows(queue: Queue, refuse: bool = True) -> None:
    """A trigger that fails every insert into the outbox (a full disk, say), in each backend's own terms."""
    if getattr(queue, "_db", None) is None:
        queue._conn.execute("CREATE TRIGGER no_outbox BEFORE INSERT ON notifications "
                            "BEGIN SELECT RAISE(ABORT, 'outbox full'); END" if refuse else "DROP TRIGGER no_outbox")
        return
    with queue._db.transaction() as conn:  # type: ignore[attr-defined]
        if refuse:
            conn.raw.execute("CREATE FUNCTION no_outbox() RETURNS trigger LANGUAGE plpgsql AS "
                             "$$ BEGIN RAISE EXCEPTION 'outbox full'; END $$")
            conn.raw.execute("CREATE TRIGGER no_outbox BEFORE INSERT ON notifications "
                             "FOR EACH ROW EXECUTE FUNCTION no_outbox()")
        else:
            conn.raw.execute("DROP TRIGGER no_outbox ON notifications")


def test_a_pipeline_end_rolls_back_with_its_outbox_row(queue: Queue, tmp_path: Path) -> None:
    spec = JobSpec(repo=REPO, ref="refs/heads/main", event="push", sha="b" * 40)
    pipeline_id = queue.create_pipeline(spec)
    queue.write_plan(pipeline_id, "b" * 40, [PlannedJobRow(spec, "build", "build")])
    job = queue.claim("r", 60)
    assert job is not None
    refuse_outbox_rows(queue)
    with pytest.raises(Exception, match="outbox full"):
        queue.complete(job.id, JobState.failure, runner_id="r")
    assert queue.pipeline(pipeline_id).state.value == "running" and queue.get(job.id).state is JobState.running
    refuse_outbox_rows(queue, False)
    queue.complete(job.id, JobState.failure, runner_id="r")
    assert events(queue, pipeline_id) == [(None, "failure", "pending")]


def test_fan_out_attempts_retries_and_drops(queue: Queue, clock: Clock, tmp_path: Path) -> None:
    pipeline_id = run(queue, JobState.failure)
    [end] = queue.due_notifications()
    made = queue.fan_out(end.id, [("ops-slack", "slack"), ("mail", "email")])
    assert [(n.target, n.kind, n.event) for n in made] == [("ops-slack", "slack", "failure"),
                                                          ("mail", "email", "failure")]
    assert queue.fan_out(end.id, [("ops-slack", "slack")]) == []  # done once, whoever comes second
    slack, mail = made
    assert queue.begin_attempt(slack.id, lease=45.0)
    assert [n.id for n in queue.due_notifications()] == [mail.id]  # under way: not due again for its lease
    clock.now += 46
    assert slack.id in [n.id for n in queue.due_notifications()]  # a crash mid-attempt: retried after the lease
    queue.notification_failed(slack.id, "HTTP 503", retry_in=10.0)
    assert slack.id not in [n.id for n in queue.due_notifications()]
    clock.now += 10
    assert queue.begin_attempt(slack.id, lease=45.0)
    queue.notification_delivered(slack.id)
    assert not queue.begin_attempt(slack.id, lease=45.0)  # delivered: never again
    queue.notification_failed(mail.id, "SMTP 550 no such user", retry_in=None)
    assert events(queue, pipeline_id) == [(None, "failure", "fanned"), ("ops-slack", "failure", "delivered"),
                                          ("mail", "failure", "dropped")]
    assert queue.notification_counts() == {("slack", "delivered"): 1, ("email", "dropped"): 1}
    queue.close()
    with Queue(tmp_path / "queue.db") as reopened:  # what a restart finds
        assert [state for _, state in reopened.notifications_of(pipeline_id)] == ["fanned", "delivered", "dropped"]
        [(attempts,)] = raw_sql(reopened, "SELECT attempts FROM notifications WHERE id = ?", (slack.id,))
    assert attempts == 2


def test_a_skipped_pipeline_writes_nothing_and_is_no_fix(queue: Queue) -> None:
    """Every job ruled out by its filters: the pipeline ends `skipped`, announces nothing (no outbox row, so no
    target hears of it), and stands neither for a failure nor between a failure and the success that fixes it."""
    failed = run(queue, JobState.failure)
    spec = JobSpec(repo=REPO, ref="refs/heads/main", event="push", sha="c" * 40)
    skipped = queue.create_pipeline(spec)
    queue.write_plan(skipped, "c" * 40, [PlannedJobRow(spec, "build", "build", skip="skipped: no change under src/**")])
    assert queue.pipeline(skipped).state == "skipped"
    assert events(queue, skipped) == []
    assert events(queue, failed) == [(None, "failure", "pending")]
    fixed = run(queue, JobState.success)
    assert events(queue, fixed) == [(None, "fixed", "pending")]
