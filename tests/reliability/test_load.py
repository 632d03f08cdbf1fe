"""Load: 1,000 jobs through signed webhooks into `forgeci serve` (busybox, snapshots off, max_concurrent = 2)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.logs import read_log
from runner.podman_user import PodmanUser
from tests.reliability.harness import (
    Ledger, ServeProcess, WebhookLoad, delivered_jobs, free_port, jobs_of, leftovers, percentile, push_payload, read_db, serving,
    summary, wait_for, write_config,
)
from tests.reliability.report import Row

pytestmark = [pytest.mark.slow, pytest.mark.podman]

MakeRepo = Callable[..., tuple[Path, str]]
JOBS = int(os.environ.get("FORGECI_LOAD_JOBS", "1000"))
PIPELINE = '''snapshot = "never"
[[steps]]
name = "work"
run = "echo ran job $FORGECI_JOB_ID"
'''


@pytest.mark.timeout(60 + JOBS * 2)  # about 0.3 s a job here; a generous bound, not a measure
def test_a_thousand_jobs(make_repo: MakeRepo, shared_dir: Path, busybox_image: str, podman_user: PodmanUser,
                         report: Callable[[str], Row]) -> None:
    row = report(f"Load: {JOBS:,} jobs by signed webhooks in one burst (busybox steps, snapshots off, "
                 f"max_concurrent = 2)")
    repo, sha = make_repo({".forgeci.toml": PIPELINE})
    data_dir, port = shared_dir / "data", free_port()
    db = data_dir / "queue.db"
    config = write_config(shared_dir / "forgeci.toml", data_dir, port, busybox_image, queue={"max_concurrent": 2})
    server = ServeProcess(config, port, shared_dir / "serve.log")
    ledger = Ledger()
    with serving(server):
        load = WebhookLoad(server.url, lambda i: push_payload(str(repo), f"refs/heads/load-{i}", sha), ledger,
                           rate=1000, connections=16, limit=JOBS).start()
        wait_for(lambda: load.done, 120, "the burst sent")
        load.stop()
        assert len(ledger.deliveries) == JOBS and ledger.unanswered == 0, load.statuses

        def drained() -> bool:  # every pipeline planned and every job finished
            return (read_db(db, "SELECT count(*) FROM pipelines WHERE state = 'planning'") == [(0,)]
                    and read_db(db, "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')") == [(0,)])

        wait_for(drained, JOBS * 2, "every job finished", interval=1.0)
        code = server.terminate()
        assert code == 0, server.text()[-3000:]
    assert leftovers(podman_user, data_dir) == []

    ids = delivered_jobs(db, ledger)
    assert len(ids) == JOBS  # one job per delivery's pipeline
    jobs = jobs_of(db, ids)
    steps = dict(read_db(db, "SELECT job_id, count(*) FROM steps WHERE state = 'success' GROUP BY job_id"))
    metrics = {row[0] for row in read_db(db, "SELECT job_id FROM job_metrics")}
    not_once = []
    for job_id in ids:
        ran = [line for line in read_log(data_dir / "logs" / f"{job_id}.log") if line.text == f"ran job {job_id}"]
        if len(ran) != 1 or jobs[job_id].attempts != 1 or steps.get(job_id) != 1:
            not_once.append((job_id, len(ran), jobs[job_id].attempts, steps.get(job_id)))
    assert not_once == [], f"jobs that did not run exactly once (id, runs, attempts, steps): {not_once[:20]}"
    assert {j.state for j in jobs.values()} == {"success"}, [j for j in jobs.values() if j.state != "success"][:20]
    assert all(j.finished_at for j in jobs.values()) and ids <= metrics, "a final state was not recorded"

    waits = [j.started_at - j.queued_at for j in jobs.values()]  # type: ignore[operator]
    runs = [j.finished_at - j.started_at for j in jobs.values()]  # type: ignore[operator]
    first = min(j.queued_at for j in jobs.values())
    span = max(j.finished_at for j in jobs.values()) - first  # type: ignore[type-var]
    busy = sum(runs) / (2 * span)
    print(f"\nload: {JOBS} jobs in {span:.1f}s ({JOBS / span:.2f} jobs/s); queue wait {summary(waits)}; "
          f"run {summary(runs)}; slots busy {busy:.0%}")
    row.happened = (f"every job ran exactly once (attempt 1, one step, one `ran` line in its log) and ended "
                    f"`success` with its final state and metrics row recorded; {span:.0f} s in all, "
                    f"{JOBS / span:.2f} jobs/s, slots busy {busy:.0%}; queue wait p95 {percentile(waits, 95):.1f} s "
                    f"(p50 {percentile(waits, 50):.1f} s, max {max(waits):.1f} s: a burst, so the wait grows "
                    f"with the position in the queue); run time p95 {percentile(runs, 95):.2f} s")
    assert row.count(ledger, db).total == 0
