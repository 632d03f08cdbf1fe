"""kill -9 of `forgeci serve` while a job's services run: after the restart no pod or container of the first
attempt is left, the job runs again in a pod of its own, and nothing at all is left once the server stops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.podman_user import PodmanUser
from tests.reliability.harness import (
    ServeProcess, free_port, instance_containers, instance_pods, jobs_of, leftovers, scrub, wait_for, write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.podman]

MakeRepo = Callable[..., tuple[Path, str]]
LEASE = 600  # seconds: the restart must reap at once, not after a lease


def pipeline(image: str) -> str:
    return f'''snapshot = "never"
[services.db]
image = "{image}"
command = ["sh", "-c", "trap '' TERM; echo db up; nc -ll -p 5432 -e echo pong"]
ready = "netstat -ltn | grep -q :5432"
[services.cache]
image = "{image}"
command = ["sleep", "600"]

[[steps]]
name = "work"
run = "nc db 5432 </dev/null; sleep 4; echo done"
'''


async def test_kill_9_with_services_running_leaves_no_pod_after_the_restart(
        make_repo: MakeRepo, shared_dir: Path, busybox_image: str, podman_user: PodmanUser) -> None:
    repo, sha = make_repo({".forgeci.toml": pipeline(busybox_image)})
    data_dir = shared_dir / "data"
    port = free_port()
    config = write_config(shared_dir / "forgeci.toml", data_dir, port, busybox_image, queue={"lease_seconds": LEASE})
    server = ServeProcess(config, port, shared_dir / "serve.log")
    try:
        await asyncio.to_thread(server.start)
        status, body = await asyncio.to_thread(server.request, "POST", "/jobs/submit",
                                               {"repo": str(repo), "ref": "main", "sha": sha})
        assert status == 201, body
        job_id = int(body["id"])
        await asyncio.to_thread(wait_for, lambda: _log_has(data_dir, job_id, "pong"),
                                60, "the step talking to its service")
        before = instance_pods(podman_user, data_dir)
        assert len(before) == 1 and before[0].split()[1] == str(job_id), before
        # The job's container, two services, and the pod's infra container (created through the API, it has the
        # pod's labels).
        assert len(instance_containers(podman_user, data_dir)) == 4

        await asyncio.to_thread(server.kill)
        assert instance_pods(podman_user, data_dir) == before  # nothing cleans up after a kill -9

        restarted = time.monotonic()
        await asyncio.to_thread(server.start)
        old_pod = before[0].split()[0]
        await asyncio.to_thread(wait_for, lambda: all(line.split()[0] != old_pod
                                                      for line in instance_pods(podman_user, data_dir)),
                                30, "the start-up reap removing the first attempt's pod")
        reaped_in = time.monotonic() - restarted
        await asyncio.to_thread(wait_for, lambda: jobs_of(data_dir / "queue.db", {job_id})[job_id].state == "success",
                                120, "the job finishing on its second attempt")
        assert jobs_of(data_dir / "queue.db", {job_id})[job_id].attempts == 2
        assert await asyncio.to_thread(server.terminate) == 0, server.text()[-3000:]
        left = leftovers(podman_user, data_dir)
    finally:
        await asyncio.to_thread(server.stop)
        scrub(podman_user, data_dir)
    assert left == []
    assert reaped_in < 30
    assert f"removing leftover pod {old_pod[:12]} of job {job_id}" in server.text()


def _log_has(data_dir: Path, job_id: int, text: str) -> bool:
    path = data_dir / "logs" / f"{job_id}.log"
    return path.exists() and text in path.read_text(errors="replace")
