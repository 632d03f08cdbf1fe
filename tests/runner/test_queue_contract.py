"""Contract of runner.queue.Queue: ordering, leases, retries, cancellation, steps, pagination, migrations."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

import runner.queue.schema as schema
from runner.queue.migration import statements
from config.errors import ConfigError
from runner.errors import InvalidTransition, JobNotFound, QueueError
from runner.models import TERMINAL, Job, JobSpec, JobState, StepState
from runner.queue import NewDelivery, Queue

REPO = "https://git.example.test/acme/app.git"


class FakeClock:
    """A clock the test moves by hand, so leases expire without sleeping."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def spec(**fields: object) -> JobSpec:
    return JobSpec(**{"repo": REPO, "ref": "refs/heads/main", **fields})  # type: ignore[arg-type]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "queue.db"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The tests of a queue (`q`, `wide`) run on both backends (runner.queue.postgres_queue on a throwaway
    cluster, tests/postgres.py); those that open the SQLite file themselves run on SQLite."""
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", ["sqlite", "postgres"])


@pytest.fixture
def backend() -> str:
    return "sqlite"


def open_queue(backend: str, db: Path, request: pytest.FixtureRequest, **options: object) -> Queue:
    if backend == "postgres":
        from runner.queue.postgres_queue import PostgresQueue

        return PostgresQueue(request.getfixturevalue("pg_url"), **options)  # type: ignore[arg-type]
    return Queue(db, **options)  # type: ignore[arg-type]


@pytest.fixture
def q(backend: str, db: Path, clock: FakeClock, request: pytest.FixtureRequest) -> Queue:
    with open_queue(backend, db, request, max_concurrent=2, max_retries=3, clock=clock) as queue:
        yield queue


@pytest.fixture
def wide(backend: str, db: Path, clock: FakeClock, request: pytest.FixtureRequest) -> Queue:
    """A queue whose concurrency limit never gets in the way of ordering tests."""
    with open_queue(backend, db, request, max_concurrent=1000, max_retries=3, clock=clock) as queue:
        yield queue


def claim_all(q: Queue, runner: str = "r1") -> list[int]:
    ids = []
    while (job := q.claim(runner, 60)) is not None:
        ids.append(job.id)
    return ids


# -- models ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("priority", [-1, 11, True, 2.5, "5"])
def test_spec_rejects_a_priority_outside_0_to_10(priority: object) -> None:
    with pytest.raises(ConfigError, match="priority"):
        spec(priority=priority)


def test_spec_reports_every_bad_field_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        JobSpec(repo="", ref="main", env={"A": 1}, pr_number="7")  # type: ignore[dict-item, arg-type]
    assert {issue.path for issue in info.value.issues} == {"repo", "env", "pr_number"}


def test_spec_round_trips_through_json_and_copies_its_mappings() -> None:
    env = {"CI": "true"}
    original = spec(sha="abc123", event="pull_request", priority=7, concurrency_group="pr-4", fork=True,
                    pr_number=4, base_ref="main", pipeline={"steps": [{"name": "t", "run": "make; make test"}]},
                    env=env, meta={"pusher": "ada"})
    env["CI"] = "changed after enqueue"
    assert original.env == {"CI": "true"}
    assert JobSpec.from_json(original.to_json()) == original


def test_spec_from_dict_refuses_unknown_and_missing_keys() -> None:
    with pytest.raises(ConfigError) as info:
        JobSpec.from_dict({"repo": REPO, "colour": "blue"})
    assert {issue.path for issue in info.value.issues} == {"colour", "ref"}
    with pytest.raises(ConfigError):
        JobSpec.from_json("{not json")


def test_terminal_states_are_the_six_final_ones() -> None:
    assert TERMINAL == {JobState.success, JobState.failure, JobState.timeout, JobState.cancelled,
                        JobState.skipped, JobState.error}
    assert not JobState.running.is_terminal and JobState.skipped.is_terminal


# -- enqueue, get, persistence -----------------------------------------------------------------------


def test_enqueued_job_is_stored_queued_with_its_spec(q: Queue, clock: FakeClock) -> None:
    submitted = spec(sha="deadbeef", priority=8, meta={"delivery": "d-1"}, pipeline={"steps": []})
    job_id = q.enqueue(submitted)
    job = q.get(job_id)
    assert (job.id, job.spec, job.state, job.attempts) == (job_id, submitted, JobState.queued, 0)
    assert job.queued_at == clock.now and job.started_at is None and job.runner_id is None
    assert job.cache_hit is None and job.steps == () and not job.cancel_requested
    json.dumps(job.to_dict())  # the API serialises it as is


def test_get_of_an_unknown_id_raises_job_not_found(q: Queue) -> None:
    with pytest.raises(JobNotFound):
        q.get(404)


def test_a_pipeline_that_is_not_json_is_refused_at_enqueue(q: Queue) -> None:
    with pytest.raises(ConfigError, match="pipeline"):
        q.enqueue(spec(pipeline={"when": object()}))
    assert q.list_jobs() == ([], None)


def test_jobs_survive_reopening_and_the_pragmas_are_set(db: Path, clock: FakeClock) -> None:
    with Queue(db, clock=clock) as first:
        job_id = first.enqueue(spec())
    with Queue(db, clock=clock) as second:
        assert second.get(job_id).state == JobState.queued
        conn = second._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000


def test_ids_are_never_reused_after_retention(q: Queue, clock: FakeClock) -> None:
    older, newest = q.enqueue(spec()), q.enqueue(spec())
    q.cancel(older), q.cancel(newest)
    clock.advance(10)
    assert q.delete_finished_jobs(clock.now) == [older]  # the newest job is kept: it holds the highest id
    q.get(newest)
    assert q.enqueue(spec()) > newest


# -- ordering ----------------------------------------------------------------------------------------


def test_claims_follow_priority_then_fifo(wide: Queue) -> None:
    ids = {name: wide.enqueue(spec(priority=p)) for name, p in
           [("low1", 1), ("mid1", 5), ("high", 9), ("mid2", 5), ("low2", 1), ("mid3", 5)]}
    order = [next(n for n, i in ids.items() if i == job_id) for job_id in claim_all(wide)]
    assert order == ["high", "mid1", "mid2", "mid3", "low1", "low2"]


def test_claim_of_an_empty_queue_is_none(q: Queue) -> None:
    assert q.claim("r1", 60) is None


def test_claim_marks_the_job_running_under_a_lease(q: Queue, clock: FakeClock) -> None:
    job_id = q.enqueue(spec())
    clock.advance(5)
    job = q.claim("runner-a", 30)
    assert job is not None and job.id == job_id
    assert (job.state, job.attempts, job.runner_id) == (JobState.running, 1, "runner-a")
    assert job.started_at == clock.now and job.lease_expires == clock.now + 30
    assert q.get(job_id) == job


def test_set_priority_reorders_a_queued_job(wide: Queue) -> None:
    a, b, c = (wide.enqueue(spec(priority=5)) for _ in range(3))
    wide.set_priority(c, 9)
    wide.set_priority(a, 1)
    assert wide.get(c).spec.priority == 9
    assert claim_all(wide) == [c, b, a]


def test_set_priority_takes_the_fifo_place_in_the_new_priority(wide: Queue) -> None:
    older = wide.enqueue(spec(priority=3))
    newer = wide.enqueue(spec(priority=7))
    wide.set_priority(older, 7)
    assert claim_all(wide) == [older, newer]


def test_set_priority_only_for_a_queued_job(q: Queue) -> None:
    running = q.enqueue(spec())
    q.claim("r1", 60)
    with pytest.raises(InvalidTransition, match="running"):
        q.set_priority(running, 9)
    done = q.enqueue(spec())
    q.cancel(done)
    with pytest.raises(InvalidTransition, match="cancelled"):
        q.set_priority(done, 9)
    with pytest.raises(JobNotFound):
        q.set_priority(999, 9)
    with pytest.raises(ConfigError):
        q.set_priority(running, 11)
    assert q.get(running).spec.priority == 5


# -- concurrency limits ------------------------------------------------------------------------------


def test_max_concurrent_counts_every_running_job_in_the_database(backend: str, db: Path, clock: FakeClock,
                                                                 request: pytest.FixtureRequest) -> None:
    with open_queue(backend, db, request, max_concurrent=2, clock=clock) as one, \
            open_queue(backend, db, request, max_concurrent=2, clock=clock) as two:
        ids = [one.enqueue(spec()) for _ in range(3)]
        assert one.claim("r1", 60) is not None
        assert two.claim("r2", 60) is not None
        assert one.claim("r1", 60) is None and two.claim("r2", 60) is None
        two.complete(ids[1], JobState.success, runner_id="r2")
        third = one.claim("r1", 60)
        assert third is not None and third.id == ids[2]


def test_at_most_one_running_job_per_concurrency_group(wide: Queue) -> None:
    first = wide.enqueue(spec(concurrency_group="refs/heads/main"))
    second = wide.enqueue(spec(concurrency_group="refs/heads/main", priority=9))
    other = wide.enqueue(spec(concurrency_group="refs/heads/dev"))
    free = wide.enqueue(spec())
    assert wide.claim("r1", 60).id == second  # type: ignore[union-attr]
    assert claim_all(wide) == [other, free]  # `first` waits: its group is running
    wide.complete(second, JobState.success)
    assert wide.claim("r1", 60).id == first  # type: ignore[union-attr]


# -- leases ------------------------------------------------------------------------------------------


def test_heartbeat_extends_only_the_holders_lease(q: Queue, clock: FakeClock) -> None:
    job_id = q.enqueue(spec())
    q.claim("r1", 30)
    clock.advance(20)
    assert q.heartbeat(job_id, "r1", 30)
    assert q.get(job_id).lease_expires == clock.now + 30
    assert not q.heartbeat(job_id, "intruder", 30)
    clock.advance(25)  # 45 s after the claim, 25 after the heartbeat
    assert q.expire_leases() == []
    assert q.get(job_id).state == JobState.running


def test_an_expired_lease_requeues_the_job_and_locks_out_the_late_runner(q: Queue, clock: FakeClock) -> None:
    job_id = q.enqueue(spec())
    q.claim("r1", 30)
    clock.advance(29.9)
    assert q.expire_leases() == []
    clock.advance(0.1)
    assert q.expire_leases() == [job_id]
    job = q.get(job_id)
    assert (job.state, job.error, job.runner_id, job.lease_expires) == (JobState.queued, "lease expired", None, None)
    assert not q.heartbeat(job_id, "r1", 30)
    with pytest.raises(InvalidTransition):
        q.complete(job_id, JobState.success, runner_id="r1")
    with pytest.raises(InvalidTransition):
        q.fail_infra(job_id, "late", runner_id="r1")
    again = q.claim("r2", 30)
    assert again is not None and (again.id, again.attempts, again.runner_id) == (job_id, 2, "r2")
    with pytest.raises(InvalidTransition, match="r2"):
        q.complete(job_id, JobState.failure, runner_id="r1")  # the old runner cannot end the new attempt
    assert q.get(job_id).state == JobState.running


def test_expired_jobs_go_back_to_the_front_oldest_first(wide: Queue, clock: FakeClock) -> None:
    a, b = wide.enqueue(spec()), wide.enqueue(spec())
    waiting = wide.enqueue(spec())
    wide.claim("r1", 10), wide.claim("r2", 10)
    urgent = wide.enqueue(spec(priority=9))
    clock.advance(10)
    assert wide.expire_leases() == [a, b]
    assert claim_all(wide) == [urgent, a, b, waiting]


# -- retries -----------------------------------------------------------------------------------------


def test_an_infra_fault_retries_at_the_front_then_errors_after_max_retries(q: Queue) -> None:
    job_id = q.enqueue(spec())
    behind = q.enqueue(spec())
    for attempt in range(1, 5):  # max_retries=3: four attempts in all
        job = q.claim("r1", 60)
        assert job is not None and (job.id, job.attempts) == (job_id, attempt)
        state = q.fail_infra(job_id, f"podman died #{attempt}", runner_id="r1")
        assert state == (JobState.queued if attempt < 4 else JobState.error)
    job = q.get(job_id)
    assert (job.state, job.attempts, job.error) == (JobState.error, 4, "podman died #4")
    assert job.finished_at is not None
    assert claim_all(q) == [behind]


def test_a_requeued_job_is_in_front_of_its_priority_only(wide: Queue) -> None:
    retried = wide.enqueue(spec(priority=5))
    older_peer = wide.enqueue(spec(priority=5))
    wide.claim("r1", 60)
    higher = wide.enqueue(spec(priority=6))
    assert wide.fail_infra(retried, "clone failed") == JobState.queued
    assert wide.get(retried).error == "clone failed"
    assert claim_all(wide) == [higher, retried, older_peer]


def test_fail_infra_needs_a_running_job(q: Queue) -> None:
    job_id = q.enqueue(spec())
    with pytest.raises(InvalidTransition, match="queued"):
        q.fail_infra(job_id, "boom")
    with pytest.raises(JobNotFound):
        q.fail_infra(12345, "boom")
    q.claim("r1", 60)
    with pytest.raises(InvalidTransition, match="r1"):
        q.fail_infra(job_id, "boom", runner_id="r2")
    assert q.get(job_id).state == JobState.running


# -- completion --------------------------------------------------------------------------------------


def test_complete_records_the_outcome_and_terminal_states_are_final(q: Queue, clock: FakeClock) -> None:
    job_id = q.enqueue(spec())
    q.claim("r1", 60)
    clock.advance(42)
    q.complete(job_id, JobState.failure, error="step test exited 1", runner_id="r1")
    job = q.get(job_id)
    assert (job.state, job.error, job.finished_at, job.duration) == (
        JobState.failure, "step test exited 1", clock.now, 42)
    for late in (JobState.success, JobState.cancelled):
        with pytest.raises(InvalidTransition, match="failure"):
            q.complete(job_id, late)
    with pytest.raises(InvalidTransition):
        q.cancel(job_id)
    assert q.get(job_id).state == JobState.failure


def test_complete_refuses_a_non_terminal_state_and_an_unknown_job(q: Queue) -> None:
    job_id = q.enqueue(spec())
    with pytest.raises(ValueError):
        q.complete(job_id, JobState.running)
    with pytest.raises(JobNotFound):
        q.complete(999, JobState.success)


def test_a_queued_job_can_be_completed_without_a_runner(q: Queue) -> None:
    job_id = q.enqueue(spec())
    with pytest.raises(InvalidTransition):
        q.complete(job_id, JobState.skipped, runner_id="r1")  # no runner holds it
    q.complete(job_id, JobState.skipped)
    assert q.get(job_id).state == JobState.skipped


# -- cancellation ------------------------------------------------------------------------------------


def test_cancel_of_a_queued_job_is_immediate(q: Queue, clock: FakeClock) -> None:
    job_id = q.enqueue(spec())
    assert q.cancel(job_id) == JobState.cancelled
    job = q.get(job_id)
    assert job.state == JobState.cancelled and job.finished_at == clock.now
    assert q.claim("r1", 60) is None


def test_cancel_of_a_running_job_asks_its_runner_to_stop(q: Queue) -> None:
    job_id = q.enqueue(spec())
    q.claim("r1", 60)
    assert not q.is_cancel_requested(job_id)
    assert q.cancel(job_id) == JobState.running
    assert q.is_cancel_requested(job_id) and q.get(job_id).state == JobState.running
    assert q.heartbeat(job_id, "r1", 60)  # the runner still holds it while it stops the container
    q.complete(job_id, JobState.cancelled, runner_id="r1")
    assert q.get(job_id).state == JobState.cancelled


def test_a_cancel_requested_job_is_not_retried_after_an_infra_fault(q: Queue) -> None:
    job_id = q.enqueue(spec())
    q.claim("r1", 60)
    q.cancel(job_id)
    assert q.fail_infra(job_id, "runner lost") == JobState.cancelled
    assert q.get(job_id).finished_at is not None


def test_cancel_of_a_terminal_or_unknown_job_is_refused(q: Queue) -> None:
    job_id = q.enqueue(spec())
    q.cancel(job_id)
    with pytest.raises(InvalidTransition, match="cancelled"):
        q.cancel(job_id)
    with pytest.raises(JobNotFound):
        q.cancel(999)
    with pytest.raises(JobNotFound):
        q.is_cancel_requested(999)


def test_a_superseding_delivery_cancels_older_unfinished_jobs_of_the_group(wide: Queue) -> None:
    """Jobs of no pipeline (queued before pipelines existed) in the group are superseded too."""
    finished = wide.enqueue(spec(concurrency_group="main"))
    wide.claim("r1", 60)
    wide.complete(finished, JobState.success)
    running = wide.enqueue(spec(concurrency_group="main"))
    wide.claim("r1", 60)
    queued = wide.enqueue(spec(concurrency_group="main"))
    elsewhere = wide.enqueue(spec(concurrency_group="dev"))
    [delivery] = wide.enqueue_deliveries([NewDelivery("github", "d1", (spec(concurrency_group="main"),), True)])
    assert (delivery.cancelled, delivery.stopping) == ((queued,), (running,))
    [newest] = delivery.pipeline_ids
    states = {i: (wide.get(i).state, wide.get(i).cancel_requested) for i in (finished, running, queued, elsewhere)}
    assert states == {
        finished: (JobState.success, False),
        running: (JobState.running, True),
        queued: (JobState.cancelled, True),
        elsewhere: (JobState.queued, False),
    }
    [again] = wide.enqueue_deliveries([NewDelivery("github", "d2", (spec(concurrency_group="main"),), True)])
    assert (again.cancelled, again.stopping) == ((), ())  # the flagged running job is not asked twice
    assert again.superseded == (newest,) and wide.pipeline(newest).state == "cancelled"


# -- steps and cache ---------------------------------------------------------------------------------


def test_steps_are_recorded_with_durations_from_the_clock(q: Queue, clock: FakeClock) -> None:
    job_id = q.enqueue(spec())
    q.claim("r1", 60)
    q.set_cache_hit(job_id, True)
    q.start_step(job_id, 0, "install")
    clock.advance(3)
    q.finish_step(job_id, 0, StepState.success, 0)
    q.start_step(job_id, 1, "test")
    running = q.get(job_id).steps[1]
    assert (running.state, running.duration, running.finished_at) == (StepState.running, None, None)
    clock.advance(1.5)
    q.finish_step(job_id, 1, StepState.failure, 2)
    job = q.get(job_id)
    assert job.cache_hit is True
    assert [(s.index, s.name, s.state, s.exit_code, s.duration) for s in job.steps] == [
        (0, "install", StepState.success, 0, 3), (1, "test", StepState.failure, 2, 1.5)]


def test_step_writes_need_the_job_running_and_the_step_started(q: Queue) -> None:
    job_id = q.enqueue(spec())
    with pytest.raises(InvalidTransition, match="queued"):
        q.start_step(job_id, 0, "build")
    with pytest.raises(InvalidTransition):
        q.set_cache_hit(job_id, False)
    q.claim("r1", 60)
    with pytest.raises(InvalidTransition, match="step 0"):
        q.finish_step(job_id, 0, StepState.success, 0)
    with pytest.raises(ValueError):
        q.finish_step(job_id, 0, StepState.running, None)
    q.start_step(job_id, 0, "build")
    q.complete(job_id, JobState.timeout)
    with pytest.raises(InvalidTransition, match="timeout"):
        q.finish_step(job_id, 0, StepState.success, 0)  # a late runner cannot rewrite a finished job
    assert q.get(job_id).steps[0].state == StepState.running
    with pytest.raises(JobNotFound):
        q.start_step(999, 0, "x")


def test_a_retry_sees_the_previous_attempts_steps_until_it_resets_them(q: Queue) -> None:
    job_id = q.enqueue(spec())
    q.claim("r1", 60)
    q.start_step(job_id, 0, "clone")
    q.fail_infra(job_id, "network down")
    retry = q.claim("r2", 60)
    assert retry is not None and [s.name for s in retry.steps] == ["clone"]
    q.reset_steps(job_id)
    assert q.get(job_id).steps == ()


# -- listing -----------------------------------------------------------------------------------------


def pages(q: Queue, limit: int, **filters: object) -> list[list[int]]:
    out, cursor = [], None
    while True:
        jobs, cursor = q.list_jobs(limit=limit, cursor=cursor, **filters)  # type: ignore[arg-type]
        out.append([job.id for job in jobs])
        if cursor is None:
            return out


def test_newest_pages_have_no_gaps_or_duplicates(wide: Queue) -> None:
    ids = [wide.enqueue(spec()) for _ in range(7)]
    assert pages(wide, 3) == [ids[6:3:-1], ids[3:0:-1], ids[:1]]
    assert pages(wide, 7) == [ids[::-1]]  # an exact fit needs no empty extra page


def test_filters_hold_across_pages(wide: Queue) -> None:
    mine = [wide.enqueue(spec()) if i % 2 else wide.enqueue(spec(repo="/srv/git/other")) for i in range(10)]
    mine = [i for i in mine if wide.get(i).spec.repo == REPO]
    wide.cancel(mine[1])
    wide.cancel(mine[3])
    listed = pages(wide, 2, repo=REPO, status="queued")
    assert [i for page in listed for i in page] == [mine[4], mine[2], mine[0]]
    assert [j.id for j in wide.list_jobs(status="cancelled")[0]] == [mine[3], mine[1]]


def test_dispatch_order_is_the_order_claims_take(wide: Queue) -> None:
    for p in (3, 7, 5, 7, 3, 10, 0, 5):
        wide.enqueue(spec(priority=p))
    first = wide.claim("r1", 60)
    assert first is not None
    wide.fail_infra(first.id, "retry me")  # back to the front of priority 10
    wide.cancel(wide.list_jobs(order="dispatch")[0][2].id)  # not listed any more
    listed = [i for page in pages(wide, 3, order="dispatch") for i in page]
    assert listed == [job.id for job in wide.list_jobs(order="dispatch", limit=100)[0]]
    assert len(listed) == 7
    assert listed == claim_all(wide)


def test_list_jobs_refuses_bad_arguments(wide: Queue) -> None:
    for _ in range(3):
        wide.enqueue(spec())
    _, newest_cursor = wide.list_jobs(limit=1)
    assert newest_cursor is not None
    bad = [
        {"order": "oldest"}, {"status": "exploded"}, {"limit": 0}, {"limit": 5000},
        {"order": "dispatch", "status": "success"}, {"cursor": "!!garbage"},
        {"cursor": newest_cursor, "order": "dispatch"},
    ]
    for arguments in bad:
        with pytest.raises(ConfigError):
            wide.list_jobs(**arguments)  # type: ignore[arg-type]


def test_active_counts_and_running_jobs(q: Queue) -> None:
    assert q.active_counts() == (0, 0)
    a, b, c = (q.enqueue(spec()) for _ in range(3))
    q.claim("r1", 60), q.claim("r2", 60)
    q.complete(a, JobState.success)
    assert q.active_counts() == (1, 1)  # (queued, running): the finished job is in neither
    assert [(j.id, j.runner_id) for j in q.running_jobs()] == [(b, "r2")]
    assert c not in [j.id for j in q.running_jobs()]


def test_retention_deletes_only_old_finished_jobs_and_their_steps(q: Queue, clock: FakeClock) -> None:
    old = q.enqueue(spec())
    q.claim("r1", 60)
    q.start_step(old, 0, "build")
    q.complete(old, JobState.success)
    clock.advance(100)
    recent = q.enqueue(spec())
    q.cancel(recent)
    still_queued = q.enqueue(spec())
    assert q.delete_finished_jobs(clock.now - 50) == [old]
    with pytest.raises(JobNotFound):
        q.get(old)
    with q._transaction() as conn:
        assert conn.execute("SELECT count(*) FROM steps").fetchone()[0] == 0
    assert {j.id for j in q.list_jobs()[0]} == {recent, still_queued}


# -- schema migrations -------------------------------------------------------------------------------


def test_a_version_1_database_is_migrated_and_keeps_its_rows(db: Path, clock: FakeClock,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    released = schema.MIGRATIONS
    # A database as forgeci's first schema left it, written with that schema's own statements (today's code
    # needs the later columns, so it cannot write one).
    v1 = sqlite3.connect(db, isolation_level=None)
    for statement in statements(released[0]):
        v1.execute(statement)
    v1.execute("PRAGMA user_version = 1")
    job_id = v1.execute(
        "INSERT INTO jobs (repo, ref, event, priority, meta, state, attempts, runner_id, lease_expires, queued_at,"
        " started_at) VALUES ('https://git.example.test/acme/app.git', 'main', 'push', 5, '{\"pusher\": \"ada\"}',"
        " 'running', 1, 'r1', 1060.0, 1000.0, 1000.0)").lastrowid
    v1.execute("INSERT INTO steps (job_id, idx, name, state, started_at) VALUES (?, 0, 'build', 'running', 1000.0)",
               (job_id,))
    v1.close()
    later = "ALTER TABLE jobs ADD COLUMN note TEXT; CREATE TABLE notes (body TEXT DEFAULT 'a;b')"
    monkeypatch.setattr(schema, "MIGRATIONS", (*released, later))
    for _ in range(2):  # the second open must not apply the migration again
        with Queue(db, clock=clock) as v2:
            kept = v2.get(job_id)
            assert (kept.state, kept.attempts, kept.runner_id, kept.spec.meta) == ("running", 1, "r1", {"pusher": "ada"})
            assert [(s.name, s.state) for s in kept.steps] == [("build", "running")]
            assert kept.pipeline_id is None and not kept.waiting
            assert v2._conn.execute("PRAGMA user_version").fetchone()[0] == len(released) + 1
            assert v2._conn.execute("SELECT note FROM jobs WHERE id = ?", (job_id,)).fetchone() == (None,)
            v2._conn.execute("INSERT INTO notes DEFAULT VALUES")
    assert sqlite3.connect(db).execute("SELECT body FROM notes").fetchall() == [("a;b",), ("a;b",)]


def test_a_database_from_a_newer_forgeci_is_refused(db: Path) -> None:
    Queue(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {len(schema.MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(QueueError, match="newer"):
        Queue(db)


# -- threads -----------------------------------------------------------------------------------------


def test_threads_sharing_one_queue_claim_each_job_once(backend: str, db: Path, request: pytest.FixtureRequest) -> None:
    with open_queue(backend, db, request, max_concurrent=1000) as shared:
        ids = {shared.enqueue(spec(priority=i % 11)) for i in range(200)}
        claimed: list[Job] = []
        lock = threading.Lock()

        def work(runner: str) -> None:
            while (job := shared.claim(runner, 60)) is not None:
                shared.complete(job.id, JobState.success, runner_id=runner)
                with lock:
                    claimed.append(job)

        threads = [threading.Thread(target=work, args=(f"t{n}",)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(job.id for job in claimed) == sorted(ids)
        assert {job.state for job in shared.list_jobs(limit=1000)[0]} == {JobState.success}
