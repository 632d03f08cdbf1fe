"""`forgeci db backup` while signed webhooks pour in: restored into a fresh instance, it holds every job and delivery
acknowledged before the backup started, and that instance serves and runs jobs."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.podman_user import PodmanUser
from tests.reliability.harness import (
    API_TOKEN, REPO_ROOT, Ledger, ServeProcess, WebhookLoad, free_port, push_payload, read_db, scrub, serving,
    wait_for, write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.podman]

MakeRepo = Callable[..., tuple[Path, str]]
PIPELINE = '''snapshot = "never"
[[steps]]
name = "work"
run = "echo job $FORGECI_JOB_ID"
'''
RATE = 6.0  # deliveries per second, from a thread of their own, through the backup and after it


def forgeci(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "forgeci_cli", "--config", str(config), *args],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)


def test_a_backup_under_webhook_load_restores_into_a_working_server(
        make_repo: MakeRepo, shared_dir: Path, busybox_image: str, podman_user: PodmanUser,
        report: Callable[[str], object]) -> None:
    row = report(f"`forgeci db backup` under signed webhook load ({RATE:g}/s), restored into a fresh instance")
    repo, sha = make_repo({".forgeci.toml": PIPELINE})
    first, second = shared_dir / "first", shared_dir / "second"
    backup = shared_dir / "backups" / "queue.db"
    backup.parent.mkdir()
    # No superseding: every push to main is a job of its own, so each acknowledged one is a row to look for.
    queue = {"cancel_superseded": False, "max_concurrent": 2}
    config_a = write_config(shared_dir / "first.toml", first, free_port(), busybox_image, queue=queue)
    port_b = free_port()
    config_b = write_config(shared_dir / "second.toml", second, port_b, busybox_image, queue=queue)
    ledger = Ledger()
    try:
        with serving(ServeProcess(config_a, int(config_a.read_text().split("port = ")[1].split()[0]),
                                  shared_dir / "first.log")) as server:
            load = WebhookLoad(server.url, lambda i: push_payload(str(repo), "refs/heads/main", sha), ledger,
                               rate=RATE).start()
            try:
                load.wait_sent(30)
                wait_for(lambda: len(read_db(first / "queue.db", "SELECT id FROM jobs")) >= 10, 60, "planned jobs")
                # Acknowledged deliveries (a 2xx is sent only after the commit), and the pipelines and jobs the
                # database holds: everything committed before the backup starts.
                before = Ledger(deliveries=dict(ledger.deliveries))
                jobs = {r[0] for r in read_db(first / "queue.db", "SELECT id FROM jobs")}
                pipelines = {r[0] for r in read_db(first / "queue.db", "SELECT id FROM pipelines")}
                started = time.monotonic()
                made = forgeci(config_a, "db", "backup", str(backup))
                took = time.monotonic() - started
                assert made.returncode == 0, made.stderr
                assert "verified" in made.stdout
                during = len(ledger.deliveries) - len(before.deliveries)
                load.wait_sent(len(ledger.deliveries) + 10)  # the server kept acknowledging after the backup
            finally:
                load.stop()
            assert load.statuses.get(500, 0) == 0, load.statuses
        assert "ok" == read_db(backup, "PRAGMA integrity_check")[0][0]

        restored = forgeci(config_b, "db", "restore", str(backup))
        assert restored.returncode == 0, restored.stderr
        before.submitted.update(jobs)  # counted like acknowledged jobs
        loss = row.count(before, second / "queue.db")  # type: ignore[attr-defined]
        assert loss.total == 0, f"lost in the restore: {loss}"
        assert pipelines <= {r[0] for r in read_db(second / "queue.db", "SELECT id FROM pipelines")}

        with serving(ServeProcess(config_b, port_b, shared_dir / "second.log")) as server:
            status, health = server.request("GET", "/healthz")
            assert status == 200 and health["status"] == "ok", health
            for job_id in sorted(jobs)[:: max(1, len(jobs) // 20)]:  # the API serves restored jobs
                status, job = server.request("GET", f"/jobs/status?id={job_id}")
                assert status == 200 and job["id"] == job_id, job
            # It runs jobs: a new one (ahead of the restored backlog) goes through to success.
            status, made_job = server.request("POST", "/jobs/submit", {"repo": str(repo), "ref": "refs/heads/main",
                                                                        "sha": sha, "priority": 10}, token=API_TOKEN)
            assert status == 201, made_job
            new_id = made_job["id"]
            assert new_id > max(jobs)
            final = wait_for(lambda: (s := server.request("GET", f"/jobs/status?id={new_id}")[1])["state"]
                             not in ("queued", "running") and s, 120, "the new job on the restored server")
            assert final["state"] == "success", final
        row.happened = (  # type: ignore[attr-defined]
            f"{len(before.deliveries)} deliveries, {len(pipelines)} pipelines and {len(jobs)} jobs committed before "
            f"the backup all restored; it took {took:.2f}s while {during} more deliveries were acknowledged; "
            f"integrity ok; restored into "
            f"a fresh data dir, its server answered /healthz and the API, and ran a new job to success")
    finally:
        for data_dir in (first, second):
            scrub(podman_user, data_dir)
