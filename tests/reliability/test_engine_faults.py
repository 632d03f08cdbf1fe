"""Engine faults under `forgeci serve`: the Podman service killed mid-job, a missing image, a full workspace disk."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runner.logs import read_log
from runner.podman_user import PodmanUser
from tests.conftest import git
from tests.reliability.harness import (
    Ledger, ServeProcess, free_port, instance_containers, leftovers, pid_alive, plural, read_db,
    service_processes, serving, wait_for, write_config,
)
from tests.reliability.mountns import shared_tmpfs
from tests.reliability.report import Row

pytestmark = [pytest.mark.slow, pytest.mark.podman]

MakeRepo = Callable[..., tuple[Path, str]]
MISSING_IMAGE = "localhost/forgeci-reliability-missing:1"


def submit(server: ServeProcess, ledger: Ledger, repo: Path, sha: str, ref: str = "main") -> int:
    status, body = server.request("POST", "/jobs/submit", {"repo": str(repo), "ref": ref, "sha": sha})
    assert status == 201, body
    ledger.submitted_job(body["id"])
    return int(body["id"])


def finished(server: ServeProcess, job_id: int, timeout: float = 120) -> dict[str, object]:
    def done() -> dict[str, object] | None:
        status, body = server.request("GET", f"/jobs/status?id={job_id}")
        assert status == 200, body
        return body if body["state"] not in ("queued", "running") else None

    return wait_for(done, timeout, f"job {job_id} finished")  # type: ignore[no-any-return]


def log_text(data_dir: Path, job_id: int) -> str:
    return "\n".join(line.text for line in read_log(data_dir / "logs" / f"{job_id}.log"))


def step_running(db: Path, job_id: int, step: str) -> bool:
    rows = read_db(db, "SELECT state FROM steps WHERE job_id = ? AND name = ?", (job_id, step))
    return rows == [("running",)]


def healthz(server: ServeProcess) -> tuple[int, dict[str, object]]:
    return server.request("GET", "/healthz", token=None)


def test_podman_service_killed_mid_job_and_a_missing_image(
    make_repo: MakeRepo, shared_dir: Path, busybox_image: str, podman_user: PodmanUser, report: Callable[[str], Row],
) -> None:
    repo, sha = make_repo({".forgeci.toml": 'snapshot = "never"\n[[steps]]\nname = "work"\n'
                                            'run = "echo started; sleep 3; echo finished"\n'})
    git(repo, "checkout", "-q", "-b", "other-image")
    (repo / ".forgeci.toml").write_text(f'image = "{MISSING_IMAGE}"\n[[steps]]\nname = "never"\nrun = "true"\n')
    git(repo, "commit", "-qam", "missing image")
    missing_sha = git(repo, "rev-parse", "HEAD")
    data_dir, port = shared_dir / "data", free_port()
    db = data_dir / "queue.db"
    # A private Podman service: killing the shared one would disturb every other forgeci on this machine.
    config = write_config(shared_dir / "forgeci.toml", data_dir, port, busybox_image, queue={"max_retries": 1},
                          runner={"podman_service": "private"})
    server = ServeProcess(config, port, shared_dir / "serve.log")
    killed, missing = report("Engine: the Podman service killed (SIGKILL) in the middle of a job's step"), \
        report(f"Engine: a pipeline whose image is missing ({MISSING_IMAGE})")
    ledger = Ledger()
    with serving(server):
        job_id = submit(server, ledger, repo, sha)
        wait_for(lambda: step_running(db, job_id, "work"), 60, "the step running")
        time.sleep(0.5)
        service_pid = int((data_dir / "podman" / "service.pid").read_text())
        old_services = set(service_processes(data_dir))
        os.killpg(service_pid, signal.SIGKILL)
        job = finished(server, job_id)
        status, health = healthz(server)
        assert status == 200 and health["engine"] is True, health
        text = log_text(data_dir, job_id)
        assert job["state"] == "success" and job["attempts"] == 2, (job, text)
        assert "infrastructure error" in text and f"job {job_id}, attempt 2" in text, text
        assert text.count("finished") == 1, text  # the first attempt never got there; the second did
        new_pid = int((data_dir / "podman" / "service.pid").read_text())
        assert new_pid != service_pid and not any(pid_alive(p) for p in old_services)
        wait_for(lambda: instance_containers(podman_user, data_dir) == [], 30,
                 "no container of the first attempt left")
        killed.happened = (f"the watchdog restarted the service (pid {service_pid} -> {new_pid}); the job went "
                           f"back to the queue and ran again: success on attempt 2; no container of attempt 1 "
                           f"left; /healthz ok")

        bad = submit(server, ledger, repo, missing_sha, ref="other-image")
        job = finished(server, bad)
        # The pipeline names an image that does not exist: the pipeline's fault, so no retry can help.
        assert job["state"] == "failure" and job["attempts"] == 1, job
        assert MISSING_IMAGE in str(job["error"]), job
        assert MISSING_IMAGE in log_text(data_dir, bad)
        missing.happened = f"`failure` at once (attempt {job['attempts']}), naming the image: {job['error']}"
        after = finished(server, submit(server, ledger, repo, sha))
        assert after["state"] == "success", after
    assert leftovers(podman_user, data_dir) == []
    assert killed.count(ledger, db).total == 0
    assert missing.count(ledger, db).total == 0


@pytest.fixture
def small_workspace_disk(shared_dir: Path, podman_user: PodmanUser) -> Iterator[Path]:
    """data/workspaces on a 4 MB tmpfs owned by the Podman user, seen by the host and rootless Podman alike."""
    folder = shared_dir / "data" / "workspaces"
    folder.mkdir(parents=True)
    mounted = contextlib.ExitStack()
    try:
        mounted.enter_context(shared_tmpfs(folder, "4m", podman_user))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"cannot mount a small tmpfs for the workspaces (the suite runs as root, as CI does): {exc}")
    with mounted:
        yield folder


def fill(folder: Path) -> Path:
    """Fill a file system to the last byte, as root; the filler's path."""
    filler = folder / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return filler


def test_workspace_disk_full(make_repo: MakeRepo, shared_dir: Path, busybox_image: str, podman_user: PodmanUser,
                             small_workspace_disk: Path, report: Callable[[str], Row]) -> None:
    repo, sha = make_repo({".forgeci.toml": 'snapshot = "never"\n[[steps]]\nname = "fill"\n'
                                            'run = "dd if=/dev/zero of=big bs=64k count=1000"\n'})
    git(repo, "checkout", "-q", "-b", "small")
    (repo / ".forgeci.toml").write_text('snapshot = "never"\n[[steps]]\nname = "small"\nrun = "echo fits > f"\n')
    git(repo, "commit", "-qam", "small")
    small_sha = git(repo, "rev-parse", "HEAD")
    data_dir, port = shared_dir / "data", free_port()
    db = data_dir / "queue.db"
    config = write_config(shared_dir / "forgeci.toml", data_dir, port, busybox_image, queue={"max_retries": 1})
    server = ServeProcess(config, port, shared_dir / "serve.log")
    row = report("Engine: the workspace disk full (data/workspaces on a 4 MB tmpfs): a step fills it, then a job "
                 "starts on a full disk")
    ledger = Ledger()
    with serving(server):
        filling = finished(server, submit(server, ledger, repo, sha))
        text = log_text(data_dir, int(filling["id"]))  # type: ignore[call-overload]
        assert filling["state"] == "failure" and filling["attempts"] == 1, (filling, text)
        assert "No space left on device" in text, text
        assert healthz(server)[0] == 200

        filler = fill(small_workspace_disk)
        starved = finished(server, submit(server, ledger, repo, small_sha, ref="small"))
        assert starved["state"] == "error", starved
        assert "No space left on device" in str(starved["error"]), starved
        assert healthz(server)[0] == 200

        filler.unlink()
        fine = finished(server, submit(server, ledger, repo, small_sha, ref="small"))
        assert fine["state"] == "success", fine
    assert leftovers(podman_user, data_dir) == []
    attempts = int(starved["attempts"])  # type: ignore[call-overload]
    row.happened = (f"the filling job ended `failure` (its step: No space left on device); a job on the full disk "
                    f"ended `error` after {plural(attempts, 'attempt')}: {starved['error']}; the server kept serving "
                    f"and ran the next job once there was room")
    assert row.count(ledger, db).total == 0
