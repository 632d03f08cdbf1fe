"""kill -9 of `forgeci serve` with a pipeline half done: after the restart the pipeline finishes, every job ends in
exactly one terminal state, and none stays waiting on a need."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.podman_user import PodmanUser
from tests.reliability.harness import (
    ServeProcess, free_port, push_payload, read_db, scrub, signed, wait_for, write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.podman]

MakeRepo = Callable[..., tuple[Path, str]]
LEASE = 600  # seconds: waiting out a lease would blow the bounds below
DIAMOND = '''
snapshot = "never"
[jobs.a]
steps = [{ name = "a", run = "echo a" }]
[jobs.b]
needs = ["a"]
steps = [{ name = "b", run = "sleep 3; echo b" }]
[jobs.c]
needs = ["a"]
steps = [{ name = "c", run = "sleep 3; echo c" }]
[jobs.d]
needs = ["b", "c"]
steps = [{ name = "d", run = "echo d" }]
'''


def push(url: str, repo: Path, sha: str) -> int:
    body = json.dumps(push_payload(str(repo), "refs/heads/main", sha)).encode()
    request = urllib.request.Request(f"{url}/webhooks/github", data=body, method="POST",
                                     headers=signed(body, "push", str(uuid.uuid4())))
    with urllib.request.urlopen(request, timeout=30) as response:
        [pipeline_id] = json.loads(response.read())["pipelines"]
    return int(pipeline_id)


def jobs(db: Path, pipeline_id: int) -> dict[str, tuple[str, int, int]]:
    """display -> (state, attempts, blocked) of the pipeline's jobs."""
    rows = read_db(db, "SELECT display, state, attempts, blocked FROM jobs WHERE pipeline_id = ?", (pipeline_id,))
    return {display: (state, attempts, blocked) for display, state, attempts, blocked in rows}


def pipeline_state(db: Path, pipeline_id: int) -> str:
    return str(read_db(db, "SELECT state FROM pipelines WHERE id = ?", (pipeline_id,))[0][0])


def steps_started(db: Path, pipeline_id: int, names: set[str]) -> bool:
    rows = read_db(db, "SELECT j.display FROM steps s JOIN jobs j ON j.id = s.job_id "
                       "WHERE j.pipeline_id = ? AND s.state = 'running'", (pipeline_id,))
    return names <= {row[0] for row in rows}


def test_kill_9_with_a_pipeline_half_done_finishes_it_after_restart(
        make_repo: MakeRepo, shared_dir: Path, busybox_image: str, podman_user: PodmanUser) -> None:
    repo, sha = make_repo({".forgeci.toml": DIAMOND})
    data_dir = shared_dir / "data"
    db = data_dir / "queue.db"
    port = free_port()
    config = write_config(shared_dir / "forgeci.toml", data_dir, port, busybox_image,
                          queue={"lease_seconds": LEASE, "max_concurrent": 3})
    server = ServeProcess(config, port, shared_dir / "serve.log")
    try:
        server.start()
        pipeline_id = push(server.url, repo, sha)
        wait_for(lambda: steps_started(db, pipeline_id, {"b", "c"}), 90, "b and c running their steps")
        server.kill()
        before = jobs(db, pipeline_id)
        assert before["a"][0] == "success" and before["d"][0] == "queued" and before["d"][2] == 1, before

        restarted = time.monotonic()
        server.start()
        wait_for(lambda: pipeline_state(db, pipeline_id) == "success", 120, "the pipeline finished after restart")
        took = time.monotonic() - restarted
        code = server.terminate()
        assert code == 0, server.text()[-3000:]
    finally:
        server.stop()
        scrub(podman_user, data_dir)
    after = jobs(db, pipeline_id)
    assert {display: state for display, (state, _, _) in after.items()} == {
        "a": "success", "b": "success", "c": "success", "d": "success"}
    assert after["a"][1] == 1 and after["b"][1] == after["c"][1] == 2 and after["d"][1] == 1
    assert all(blocked == 0 for _, _, blocked in after.values())  # none left waiting on a need
    assert took < LEASE / 10
    rows = read_db(db, "SELECT count(*) FROM job_metrics WHERE job_id IN "
                       "(SELECT id FROM jobs WHERE pipeline_id = ?)", (pipeline_id,))
    assert rows == [(4,)]  # each job ended exactly once
