"""`forgeci serve` stopped under load: SIGTERM (graceful), then kill -9 (a crash); nothing acknowledged is lost."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.podman_user import PodmanUser
from runner.worker import CANCEL_GRACE_ON_STOP
from tests.conftest import git
from tests.reliability.harness import (
    API_TOKEN, WEBHOOK_SECRET, Ledger, ServeProcess, WebhookLoad, deliver, free_port, instance_containers, jobs_of,
    planned,
    leftovers, pid_alive, plural, push_payload, read_db, scrub, service_processes, wait_for, write_config,
)
from tests.reliability.report import Row

pytestmark = [pytest.mark.slow, pytest.mark.podman]

MakeRepo = Callable[..., tuple[Path, str]]
GRACE = 30.0  # WorkerPool.stop's grace, which `forgeci serve` uses on SIGTERM
MAX_RETRIES = 1  # small, so that one job runs out of retries in this test

WORK = '''snapshot = "never"
[[steps]]
name = "work"
run = "echo ran job $FORGECI_JOB_ID; sleep 1"
'''
# The gate job runs until the test creates `go` in its workspace, so it is surely running at each fault.
GATE = '''snapshot = "never"
[[steps]]
name = "gate"
run = "while [ ! -f go ]; do sleep 0.2; done; echo released"
'''


def running(db: Path) -> set[int]:
    return {row[0] for row in read_db(db, "SELECT id FROM jobs WHERE state = 'running'")}


def test_sigterm_then_kill_9_under_webhook_load(make_repo: MakeRepo, shared_dir: Path, busybox_image: str,
                                                podman_user: PodmanUser, report: Callable[[str], Row]) -> None:
    repo, work_sha = make_repo({".forgeci.toml": WORK})
    git(repo, "checkout", "-q", "-b", "gate")
    (repo / ".forgeci.toml").write_text(GATE)
    git(repo, "commit", "-qam", "gate")
    gate_sha = git(repo, "rev-parse", "HEAD")
    data_dir = shared_dir / "data"
    db = data_dir / "queue.db"
    port = free_port()
    # A private Podman service, whose fate after a kill -9 this checks (the shared one outlives any server).
    config = write_config(shared_dir / "forgeci.toml", data_dir, port, busybox_image,
                          queue={"max_retries": MAX_RETRIES}, runner={"podman_service": "private"})
    server = ServeProcess(config, port, shared_dir / "serve.log")
    ledger = Ledger()
    load = WebhookLoad(server.url, lambda i: push_payload(str(repo), f"refs/heads/load-{i}", work_sha), ledger,
                       rate=8)
    graceful, crash = report("Graceful stop: SIGTERM to `forgeci serve` under webhook load (8/s), jobs running, one "
                             f"outlasting the {GRACE:.0f} s grace"), \
        report("Server crash: kill -9 of `forgeci serve` under webhook load (8/s), 2 jobs running; restart")
    failed = True
    try:
        # -- A: SIGTERM ---------------------------------------------------------------------------------------
        server.start()
        [gate] = planned(db, deliver(server.url, push_payload(str(repo), "refs/heads/gate", gate_sha), ledger))
        load.start()
        wait_for(lambda: gate in running(db) and len(running(db)) == 2 and len(ledger.deliveries) > 20, 60,
                 "the gate job and another running, 20 deliveries acknowledged")
        term_at = time.time()
        code = server.terminate(timeout=GRACE + CANCEL_GRACE_ON_STOP + 60)
        stopped_at = time.time()
        jobs = jobs_of(db)
        assert code == 0, server.text()[-3000:]
        assert running(db) == set(), "jobs left running by a graceful stop"
        claimed_after = sorted(j.id for j in jobs.values() if j.started_at is not None and j.started_at > term_at)
        assert claimed_after == [], f"jobs claimed after SIGTERM: {claimed_after}"
        finished = [j for j in jobs.values() if j.id != gate and j.finished_at and j.finished_at > term_at]
        assert finished and all(j.state == "success" and j.attempts == 1 for j in finished), finished
        assert jobs[gate].state == "queued" and jobs[gate].attempts == 1, jobs[gate]
        assert "the runner stopped before the job finished" in (jobs[gate].error or "")
        assert leftovers(podman_user, data_dir) == []
        queued = sum(j.state == "queued" for j in jobs.values())
        graceful.happened = (f"exit 0 in {stopped_at - term_at:.0f} s; no claim after SIGTERM; "
                             f"{plural(len(finished), 'running job')} finished within the grace, the gate job went "
                             f"back to the queue after it (attempt 1, queued); {queued} queued jobs kept; no "
                             f"container, workspace or Podman service left")
        assert graceful.count(ledger, db).total == 0

        # -- B: kill -9 while the gate job (attempt 2) and another run ------------------------------------------------
        server.start()
        wait_for(lambda: gate in running(db) and len(running(db)) == 2, 60, "the gate job and another running")
        time.sleep(0.5)  # into their steps
        service_pid = int((data_dir / "podman" / "service.pid").read_text())
        old_services = set(service_processes(data_dir))
        old_containers = {line.split()[0] for line in instance_containers(podman_user, data_dir)}
        server.kill()
        interrupted = running(db)
        assert gate in interrupted and len(interrupted) == 2
        assert pid_alive(service_pid) and old_containers, "kill -9 should leave the service and containers behind"

        # -- C: restart; the start-up reap cleans up, interrupted jobs are retried or end `error` --------------------
        server.start()
        assert not any(pid_alive(pid) for pid in old_services), "the crashed server's Podman service survived"
        new_containers = {line.split()[0] for line in instance_containers(podman_user, data_dir)}
        assert not old_containers & new_containers, "containers of the crashed server survived the restart"
        others = interrupted - {gate}
        wait_for(lambda: all(jobs_of(db, others)[i].state == "success" for i in others), 120,
                 "the interrupted jobs retried and finished")
        load.stop()
        code = server.terminate(timeout=GRACE + CANCEL_GRACE_ON_STOP + 60)
        assert code == 0, server.text()[-3000:]
        failed = False
    finally:
        load.stop()
        server.stop()
        if failed:  # a failure after the kill leaves the crashed server's service and containers behind
            scrub(podman_user, data_dir)

    jobs = jobs_of(db)
    assert running(db) == set(), "a job stayed running"
    assert jobs[gate].state == "error" and jobs[gate].attempts == MAX_RETRIES + 1, jobs[gate]
    assert "runner restarted" in (jobs[gate].error or "")
    assert all(jobs[i].attempts == 2 and jobs[i].state == "success" for i in others), [jobs[i] for i in others]
    assert read_db(db, "PRAGMA integrity_check") == [("ok",)]
    assert leftovers(podman_user, data_dir) == []
    output = server.text()
    assert WEBHOOK_SECRET not in output and API_TOKEN not in output, "a secret reached the server's log"
    states: dict[str, int] = {}
    for job in jobs.values():
        states[job.state] = states.get(job.state, 0) + 1
    crash.happened = (f"restart killed the orphaned Podman service and removed "
                      f"{plural(len(old_containers), 'orphaned container')}; "
                      f"{plural(len(others), 'interrupted job')} retried (attempt 2) and succeeded, the gate job out "
                      f"of retries ended `error`; no job left running; database integrity ok; "
                      f"{ledger.unanswered} deliveries refused while down (a forge redelivers those); final "
                      f"states {dict(sorted(states.items()))}")
    assert crash.count(ledger, db).total == 0
