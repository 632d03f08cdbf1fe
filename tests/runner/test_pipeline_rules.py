"""The rules of pipelines of many jobs, in the queue: needs, `if`, cascading skips, fail_fast, max_parallel,
cancel, concurrency groups per pipeline, outputs, and the pipeline's own state (each rule of the README)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.errors import InvalidTransition
from runner.models import JobSpec, JobState, PipelineState
from runner.queue import NewDelivery, PlannedJobRow, Queue

SPEC = JobSpec(repo="https://git.example.test/acme/app.git", ref="main", sha="a" * 40, event="push",
               pipeline={"steps": [{"name": "s", "run": "true"}]})


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[Queue]:
    with Queue(tmp_path / "queue.db", max_concurrent=8, max_retries=0) as q:
        yield q


def job(name: str, *needs: str, display: str | None = None, **kw: object) -> PlannedJobRow:
    return PlannedJobRow(spec=SPEC, name=name, display=display or name, needs=needs, **kw)  # type: ignore[arg-type]


def plan(queue: Queue, *jobs: PlannedJobRow, spec: JobSpec = SPEC) -> tuple[int, dict[str, int]]:
    pipeline_id = queue.create_pipeline(spec)
    ids, _ = queue.write_plan(pipeline_id, spec.sha, jobs)
    return pipeline_id, {j.display: i for j, i in zip(jobs, ids)}


def claim_all(queue: Queue) -> set[int]:
    claimed = set()
    while (found := queue.claim("r", 60)) is not None:
        claimed.add(found.id)
    return claimed


def finish(queue: Queue, job_id: int, state: str = "success", **kw: object) -> None:
    queue.complete(job_id, state, None if state == "success" else f"it {state}", "r", **kw)  # type: ignore[arg-type]


def state(queue: Queue, job_id: int) -> str:
    return str(queue.get(job_id).state)


def diamond(queue: Queue, d_if: str = "success") -> tuple[int, dict[str, int]]:
    return plan(queue, job("a"), job("b", "a"), job("c", "a"), job("d", "b", "c", condition=d_if))


def test_a_job_waits_for_its_needs_and_a_diamond_runs_its_middle_in_parallel(queue: Queue) -> None:
    pid, ids = diamond(queue)
    assert queue.pipeline(pid).state is PipelineState.queued
    assert claim_all(queue) == {ids["a"]}
    assert queue.get(ids["d"]).waiting and queue.pipeline(pid).state is PipelineState.running
    finish(queue, ids["a"])
    assert claim_all(queue) == {ids["b"], ids["c"]}  # both at once
    finish(queue, ids["b"])
    assert claim_all(queue) == set()  # d still needs c
    finish(queue, ids["c"])
    assert claim_all(queue) == {ids["d"]}
    finish(queue, ids["d"])
    assert queue.pipeline(pid).state is PipelineState.success


def test_a_failed_need_skips_its_dependants_and_the_skip_cascades(queue: Queue) -> None:
    pid, ids = plan(queue, job("a"), job("b", "a"), job("c", "b"), job("report", "b", condition="always"))
    claim_all(queue)
    finish(queue, ids["a"], "failure")
    assert state(queue, ids["b"]) == state(queue, ids["c"]) == "skipped"
    assert queue.get(ids["b"]).error == "not run: a ended failure"
    assert "skipped because of its own needs" in (queue.get(ids["c"]).error or "")
    assert claim_all(queue) == {ids["report"]}  # always: every need is finished, skipped ones too
    finish(queue, ids["report"])
    assert queue.pipeline(pid).state is PipelineState.failure


def test_if_failure_runs_only_when_a_need_failed(queue: Queue) -> None:
    pid, ids = plan(queue, job("a"), job("b"), job("alert", "a", "b", condition="failure"))
    claim_all(queue)
    finish(queue, ids["a"])
    finish(queue, ids["b"], "timeout")
    assert claim_all(queue) == {ids["alert"]}
    _, ids = plan(queue, job("a"), job("alert", "a", condition="failure"))
    claim_all(queue)
    finish(queue, ids["a"])
    assert state(queue, ids["alert"]) == "skipped"


def test_continue_on_error_lets_dependants_run_and_the_pipeline_pass(queue: Queue) -> None:
    pid, ids = plan(queue, job("lint", continue_on_error=True), job("build", "lint"))
    claim_all(queue)
    finish(queue, ids["lint"], "failure")
    assert claim_all(queue) == {ids["build"]}
    finish(queue, ids["build"])
    assert queue.pipeline(pid).state is PipelineState.success


def test_a_need_skipped_by_its_own_branch_filter_counts_as_done(queue: Queue) -> None:
    pid, ids = plan(queue, job("deploy"), job("notify", "deploy"))
    claim_all(queue)
    finish(queue, ids["deploy"], "skipped")
    assert claim_all(queue) == {ids["notify"]}
    finish(queue, ids["notify"])
    assert queue.pipeline(pid).state is PipelineState.success


def test_cancelling_a_pipeline_stops_it_and_runs_no_always_job(queue: Queue) -> None:
    pid, ids = diamond(queue, d_if="always")
    claim_all(queue)
    finish(queue, ids["a"])
    claim_all(queue)  # b and c run
    settled = queue.cancel_pipeline(pid)
    assert sorted(settled.stopping) == sorted([ids["b"], ids["c"]]) and settled.cancelled == [ids["d"]]
    assert state(queue, ids["d"]) == "cancelled" and queue.get(ids["b"]).cancel_requested
    finish(queue, ids["b"], "cancelled")
    finish(queue, ids["c"], "cancelled")
    assert claim_all(queue) == set()
    assert queue.pipeline(pid).state is PipelineState.cancelled
    with pytest.raises(InvalidTransition):
        queue.cancel_pipeline(pid)


def matrix(size: int, **kw: object) -> list[PlannedJobRow]:
    return [job("test", display=f"test (n={n})", **kw) for n in range(size)]


def test_fail_fast_cancels_the_siblings_of_a_failed_member(queue: Queue) -> None:
    pid, ids = plan(queue, *matrix(3, max_parallel=2), job("build", "test"))
    running = claim_all(queue)
    assert len(running) == 2
    first, second = sorted(running)
    finish(queue, first, "failure")
    [settled] = [s for s in queue.take_settlements() if s.pipeline_id == pid][-1:]
    queued = ids["test (n=2)"]
    assert settled.stopping == [second] and settled.cancelled == [queued]
    assert state(queue, queued) == "cancelled" and queue.get(second).cancel_requested
    finish(queue, second, "cancelled")
    assert state(queue, ids["build"]) == "skipped" and queue.pipeline(pid).state is PipelineState.failure


def test_without_fail_fast_the_siblings_go_on(queue: Queue) -> None:
    _, ids = plan(queue, *matrix(2, fail_fast=False))
    a, b = sorted(claim_all(queue))
    finish(queue, a, "failure")
    assert state(queue, b) == "running" and not queue.get(b).cancel_requested


def test_max_parallel_bounds_running_members(queue: Queue) -> None:
    _, ids = plan(queue, *matrix(3, max_parallel=1))
    [one] = claim_all(queue)
    finish(queue, one)
    [two] = claim_all(queue)
    assert two != one


def test_a_concurrency_group_runs_one_pipeline_at_a_time_with_all_its_jobs(queue: Queue) -> None:
    grouped = JobSpec(**{**SPEC.to_dict(), "concurrency_group": "acme/app:main"})
    first_pid, first = plan(queue, PlannedJobRow(grouped, "x", "x"),
                            PlannedJobRow(grouped, "y", "y"), spec=grouped)
    _, second = plan(queue, PlannedJobRow(grouped, "x", "x"), spec=grouped)
    assert claim_all(queue) == {first["x"], first["y"]}  # one pipeline's jobs together
    finish(queue, first["x"])
    assert claim_all(queue) == set()  # the next pipeline of the group waits for the whole first one
    finish(queue, first["y"])
    assert claim_all(queue) == {second["x"]}
    assert queue.pipeline(first_pid).state is PipelineState.success


def test_outputs_reach_dependants_as_needs_variables(queue: Queue) -> None:
    _, ids = plan(queue, job("build-app"), job("publish", "build-app"))
    claim_all(queue)
    finish(queue, ids["build-app"], outputs={"version": "1.2.3", "image-tag": "v1"})
    [publish] = [queue.claim("r", 60)]
    assert publish is not None and publish.id == ids["publish"]
    assert publish.spec.env["NEEDS_BUILD_APP_VERSION"] == "1.2.3"
    assert publish.spec.env["NEEDS_BUILD_APP_IMAGE_TAG"] == "v1"


def test_an_infrastructure_error_out_of_retries_settles_like_a_failure(queue: Queue) -> None:
    pid, ids = plan(queue, job("a"), job("b", "a"))
    claim_all(queue)
    assert queue.fail_infra(ids["a"], "engine down", "r") is JobState.error  # max_retries = 0
    assert state(queue, ids["b"]) == "skipped" and queue.pipeline(pid).state is PipelineState.failure


def test_a_plan_for_a_cancelled_pipeline_is_refused(queue: Queue) -> None:
    pid = queue.create_pipeline(SPEC)
    assert queue.cancel_pipeline(pid).state is PipelineState.cancelled
    with pytest.raises(InvalidTransition):
        queue.write_plan(pid, SPEC.sha, [job("a")])


def test_pipelines_are_listed_newest_first_a_page_at_a_time_with_their_jobs(queue: Queue) -> None:
    made = [plan(queue, job("a"), job("b", "a"))[0] for _ in range(5)]
    other = JobSpec(**{**SPEC.to_dict(), "repo": "https://git.example.test/acme/other.git"})
    elsewhere, _ = plan(queue, PlannedJobRow(other, "x", "x"), spec=other)
    page, cursor = queue.list_pipelines(limit=4)
    assert [p.id for p in page] == [elsewhere, *reversed(made[2:])] and cursor is not None
    rest, end = queue.list_pipelines(limit=4, cursor=cursor)
    assert [p.id for p in rest] == list(reversed(made[:2])) and end is None
    assert all(len(p.job_ids) == 2 for p in rest)
    assert [p.id for p in queue.list_pipelines(repo=other.repo)[0]] == [elsewhere]
    assert [p.id for p in queue.list_pipelines(status="queued")[0]] == [elsewhere, *reversed(made)]
    jobs = queue.jobs_of_pipeline(made[0])
    assert [(j.name, j.needs, j.waiting) for j in jobs] == [("a", (), False), ("b", ("a",), True)]


def test_retention_keeps_the_jobs_of_unfinished_pipelines_and_drops_empty_finished_ones(queue: Queue) -> None:
    done, ids = plan(queue, job("a"))
    claim_all(queue)
    finish(queue, ids["a"])
    waiting, more = plan(queue, job("x"), job("y", "x"))
    claim_all(queue)
    finish(queue, more["x"])  # finished, but its pipeline still runs y
    newest, _ = plan(queue, job("n"))
    later = 1e12
    assert sorted(queue.delete_finished_jobs(later)) == [ids["a"]]
    assert [p.id for p in queue.list_pipelines()[0]] == [newest, waiting]  # `done` went with its last job
    assert queue.get(more["x"]).state is JobState.success


def test_pipeline_stats_count_states_and_end_to_end_durations(tmp_path: Path) -> None:
    now = [1000.0]
    with Queue(tmp_path / "q.db", max_concurrent=8, clock=lambda: now[0]) as q:
        ok, ok_ids = plan(q, job("a"), job("b", "a"))
        bad, bad_ids = plan(q, job("a"))
        claim_all(q)
        now[0] = 1010.0
        finish(q, ok_ids["a"])
        finish(q, bad_ids["a"], "failure")
        claim_all(q)
        now[0] = 1030.0
        finish(q, ok_ids["b"])
        stats = q.pipeline_stats(0, 2000)
    assert stats.states == {"success": 1, "failure": 1} and stats.success_rate == 0.5
    assert stats.avg_duration == 20.0 and stats.p95_duration == 30.0  # 30 s (queued at 1000, done at 1030), 10 s


def test_a_queued_job_says_why_it_waits(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db", max_concurrent=2) as q:
        grouped = JobSpec(**{**SPEC.to_dict(), "concurrency_group": "main"})
        _, ids = plan(q, job("a"), job("b", "a"), *matrix(3, max_parallel=1))
        older, later = plan(q, PlannedJobRow(grouped, "x", "x"), spec=grouped)
        _, first = plan(q, PlannedJobRow(grouped, "y", "y"), spec=grouped)
        assert q.claim("r", 60).id == ids["a"]  # type: ignore[union-attr]
        assert q.claim("r", 60).id == ids["test (n=0)"]  # type: ignore[union-attr]
        reasons = q.wait_reasons([ids["b"], ids["test (n=1)"], later["x"], first["y"], ids["a"]])
    assert reasons == {
        ids["b"]: "waits for a",
        ids["test (n=1)"]: "max_parallel: 1 of test's 1 running",
        later["x"]: "no free slot: 2 of 2 running",
        first["y"]: f"waits for pipeline {older} of its concurrency group main",
    }


def test_a_superseded_pipeline_and_its_cancelled_jobs_say_what_superseded_them(queue: Queue) -> None:
    pushed = dataclasses.replace(SPEC, concurrency_group="acme/app:main")
    [first] = queue.enqueue_deliveries([NewDelivery("github", "d1", (pushed,), supersede=True)])
    old = first.pipeline_ids[0]
    queue.write_plan(old, SPEC.sha, [job("a"), job("b", "a")])
    [second] = queue.enqueue_deliveries([NewDelivery("github", "d2", (pushed,), supersede=True)])
    new = second.pipeline_ids[0]
    assert second.superseded == (old,)
    [settled] = [s for s in queue.take_settlements() if s.pipeline_id == old]
    assert settled.reason == f"superseded by pipeline {new}" and settled.state is PipelineState.cancelled
    assert queue.pipeline(old).error == f"superseded by pipeline {new}"
    assert [(j.display, j.state, j.error) for j in queue.pipeline_jobs(old)] == [
        ("a", JobState.cancelled, f"superseded by pipeline {new}"),
        ("b", JobState.cancelled, f"superseded by pipeline {new}")]


def test_pipeline_jobs_summarise_what_failed_the_pipeline(queue: Queue) -> None:
    pid, ids = plan(queue, job("lint", continue_on_error=True), job("test"))
    claim_all(queue)
    finish(queue, ids["lint"], "failure")
    finish(queue, ids["test"], "timeout")
    summaries = {j.display: j for j in queue.pipeline_jobs(pid)}
    assert not summaries["lint"].counts_as_failed and summaries["test"].counts_as_failed
    assert summaries["test"].error == "it timeout" and summaries["lint"].continue_on_error


def test_a_pipeline_whose_every_job_its_filters_ruled_out_ends_skipped(tmp_path: Path) -> None:
    """Only jobs planned `skipped` by their filters make a skipped pipeline: one that ran, or one skipped because
    of a need, leaves it success (or failure) as before. Skipped pipelines count in no success rate or duration."""
    now = [1000.0]
    with Queue(tmp_path / "q.db", max_concurrent=8, max_retries=0, clock=lambda: now[0]) as q:
        ruled_out, _ = plan(q, job("a", skip="skipped: no change under src/**"), job("b", skip="skipped: x"))
        assert q.pipeline(ruled_out).state is PipelineState.skipped and q.pipeline(ruled_out).finished_at == 1000.0
        mixed, ids = plan(q, job("a", skip="skipped: no change under src/**"), job("b"))
        assert claim_all(q) == {ids["b"]}
        finish(q, ids["b"])
        assert q.pipeline(mixed).state is PipelineState.success
        cascaded, ids = plan(q, job("a", skip="skipped: x"), job("b", "a", condition="failure"))
        assert state(q, ids["b"]) == "skipped" and q.pipeline(cascaded).state is PipelineState.success
        failed, ids = plan(q, job("a"), job("b", "a"))
        claim_all(q)
        now[0] = 1010.0
        finish(q, ids["a"], "failure")
        assert q.pipeline(failed).state is PipelineState.failure
        stats = q.pipeline_stats(0, 2000)
        page, _ = q.list_pipelines(status="skipped")
    assert [p.id for p in page] == [ruled_out]
    assert stats.states == {"skipped": 1, "success": 2, "failure": 1} and stats.success_rate == 2 / 3
    assert stats.avg_duration == 10 / 3  # the mixed and cascaded pipelines' 0 s and the failed one's 10 s
