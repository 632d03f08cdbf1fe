"""The console's pipeline fixtures over the shared fake API (tests.client.fake_pipelines): five pipelines in
every kind of state, one of them a running DAG of eight jobs in four stages."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from runner.models import Job
from tests.client.fake_api import NOW, T0, FakeApi, make_job

SHA = "0123456789abcdef0123456789abcdef01234567"


def pipeline_job(job_id: int, name: str, state: str, *, display: str | None = None, needs: tuple[str, ...] = (),
                 repo: str = "https://github.com/acme/app.git", ref: str = "refs/heads/main",
                 started: float | None = None, finished: float | None = None, error: str | None = None) -> Job:
    """A job of a pipeline, as the queue stores it; queued a second before it started."""
    queued = started - 1 if started is not None else NOW - 210
    job = make_job(job_id, repo=repo, ref=ref, state=state, queued_at=queued, started_at=started,
                   finished_at=finished, attempts=1 if started is not None else 0, error=error)
    return replace(job, name=name, display=display or name, needs=needs, waiting=state == "queued" and bool(needs))


def trigger(*, repo: str = "https://github.com/acme/app.git", ref: str = "refs/heads/main", event: str = "push",
            created: float, started: float | None = None, finished: float | None = None,
            error: str | None = None) -> dict[str, Any]:
    """A pipeline's own fields for FakeApi.add_pipeline: what triggered it, at the one sha, and when it ran."""
    return {"repo": repo, "ref": ref, "sha": SHA, "event": event, "created_at": created, "started_at": started,
            "finished_at": finished, "error": error}


def seed_pipelines(api: FakeApi) -> None:
    """Five pipelines, newest first: planning; running with 8 jobs in 4 stages (a matrix in the second);
    cancelled; failed (a failed test skipped its build); one job that succeeded."""
    web, api_repo = "https://github.com/acme/web.git", "https://github.com/acme/api.git"
    api.add_pipeline(1, [pipeline_job(11, "ci", "success", repo=web, ref="refs/tags/v1.2.0", started=T0 + 101,
                                      finished=T0 + 143)], "success",
                     **trigger(repo=web, ref="refs/tags/v1.2.0", event="tag", created=T0 + 100, started=T0 + 101,
                               finished=T0 + 143))
    login = "refs/heads/feature/login"
    api.add_pipeline(2, [
        pipeline_job(12, "lint", "success", repo=api_repo, ref=login, started=T0 + 201, finished=T0 + 210),
        pipeline_job(13, "test", "failure", needs=("lint",), repo=api_repo, ref=login, started=T0 + 210,
                     finished=T0 + 255, error="step pytest failed with exit code 1"),
        pipeline_job(14, "build", "skipped", needs=("test",), repo=api_repo, ref=login,
                     error="skipped: its need test ended failure"),
    ], "failure", **trigger(repo=api_repo, ref=login, created=T0 + 200, started=T0 + 201, finished=T0 + 260))
    pr = "refs/pull/42/head"
    api.add_pipeline(3, [pipeline_job(15, "ci", "cancelled", ref=pr, started=T0 + 301, finished=T0 + 320,
                                      error="cancelled by the operator")], "cancelled",
                     **trigger(ref=pr, event="pull_request", created=T0 + 300, started=T0 + 301, finished=T0 + 320))
    matrix = {19: ("3.12", "sqlite", "running", NOW - 100), 20: ("3.12", "postgres", "running", NOW - 95),
              21: ("3.13", "sqlite", "queued", None)}
    api.wait_reasons.update({21: "max_parallel: 2 of test's 2 running", 22: "waits for test", 23: "waits for build"})
    api.add_pipeline(4, [
        pipeline_job(16, "lint", "success", started=NOW - 200, finished=NOW - 188),
        pipeline_job(17, "docs", "success", needs=("lint",), started=NOW - 188, finished=NOW - 160),
        pipeline_job(18, "test", "success", display="test (python=3.11, db=sqlite)", needs=("lint",),
                     started=NOW - 188, finished=NOW - 120),
        *(pipeline_job(i, "test", state, display=f"test (python={py}, db={db})", needs=("lint",), started=started)
          for i, (py, db, state, started) in matrix.items()),
        pipeline_job(22, "build", "queued", needs=("test",)),
        pipeline_job(23, "deploy", "queued", needs=("build",)),
    ], "running", **trigger(created=NOW - 210, started=NOW - 200))
    api.add_pipeline(5, [], "planning", **trigger(ref="refs/heads/feature/x", created=NOW - 5))
