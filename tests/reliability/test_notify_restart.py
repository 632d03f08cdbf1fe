"""kill -9 of `forgeci serve` between the end of a pipeline and the delivery of its notification: the message is
in the outbox, and the restarted server delivers it, once, signed, with the step's secret masked."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from runner.podman_user import PodmanUser
from tests.reliability.harness import (
    SECRET_ENV, ServeProcess, free_port, push_payload, read_db, scrub, signed, wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.podman]

MakeRepo = Callable[..., tuple[Path, str]]
HOOK_SECRET = "restart-hook-key-3b7e"
SECRET = "deploy-Secret-Value-9c4d1f"
PIPELINE = '''
snapshot = "never"
secrets = ["DEPLOY"]
[[steps]]
name = "test"
run = "echo collecting; echo deploy key is $DEPLOY; echo FAILED the-check; exit 1"
'''


class Hook:
    """A webhook receiver in a thread: while `hanging`, requests are read and never answered (the delivery is under
    way when the server dies); then it verifies the signature and records what it accepted."""

    def __init__(self) -> None:
        self.hanging = threading.Event()
        self.hanging.set()
        self.release = threading.Event()
        self.seen: list[dict[str, Any]] = []  # every request read, answered or not
        self.accepted: list[tuple[dict[str, str], dict[str, Any]]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.seen.append(json.loads(body))
                if hook.hanging.is_set():
                    hook.release.wait(120)
                    return  # the client is gone by now
                expected = "sha256=" + hmac.new(HOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
                if not hmac.compare_digest(expected, self.headers.get("X-Forgeci-Signature", "")):
                    self.send_response(401)
                    self.end_headers()
                    return
                hook.accepted.append((dict(self.headers), json.loads(body)))
                self.send_response(200)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self) -> None:
        self.hanging.clear()
        self.release.set()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


def config(path: Path, data_dir: Path, port: int, image: str) -> Path:
    doc = {
        "data_dir": str(data_dir), "server": {"host": "127.0.0.1", "port": port, "public_url": "https://ci.test"},
        "runner": {"image": image, "network": "none", "step_timeout": "10m", "job_timeout": "20m"},
        "secrets": {"DEPLOY": {"env": "FORGECI_SECRET_DEPLOY"}},
        "notify": [{"kind": "webhook", "url_env": "FORGECI_HOOK_URL", "secret_env": "FORGECI_HOOK_SECRET",
                    "on": ["failure"], "timeout": "5s", "backoff": "1s"}],
    }
    path.write_text(tomli_w.dumps(doc))
    return path


def push(url: str, repo: Path, sha: str) -> int:
    body = json.dumps(push_payload(str(repo), "refs/heads/main", sha)).encode()
    request = urllib.request.Request(f"{url}/webhooks/github", data=body, method="POST",
                                     headers=signed(body, "push", str(uuid.uuid4())))
    with urllib.request.urlopen(request, timeout=30) as response:
        [pipeline_id] = json.loads(response.read())["pipelines"]
    return int(pipeline_id)


def outbox(db: Path, pipeline_id: int) -> list[tuple[Any, ...]]:
    return read_db(db, "SELECT target, state, attempts FROM notifications WHERE pipeline_id = ? "
                       "AND target IS NOT NULL", (pipeline_id,))


def test_kill_9_between_a_pipeline_end_and_its_notification_delivers_it_after_restart(
        make_repo: MakeRepo, shared_dir: Path, busybox_image: str, podman_user: PodmanUser, hook: Hook) -> None:
    repo, sha = make_repo({".forgeci.toml": PIPELINE})
    data_dir = shared_dir / "data"
    db = data_dir / "queue.db"
    port = free_port()
    env = {**SECRET_ENV, "FORGECI_SECRET_DEPLOY": SECRET, "FORGECI_HOOK_URL": hook.url,
           "FORGECI_HOOK_SECRET": HOOK_SECRET}
    server = ServeProcess(config(shared_dir / "forgeci.toml", data_dir, port, busybox_image), port,
                          shared_dir / "serve.log", env=env)
    try:
        server.start()
        pipeline_id = push(server.url, repo, sha)
        wait_for(lambda: read_db(db, "SELECT state FROM pipelines WHERE id = ?", (pipeline_id,)) == [("failure",)],
                 180, "the pipeline failed")
        wait_for(lambda: hook.seen, 60, "the delivery under way")
        server.kill()
        assert outbox(db, pipeline_id) == [("webhook-1", "pending", 1)]  # not delivered, not lost
        hook.answer()
        server.start()
        wait_for(lambda: hook.accepted, 120, "the notification delivered after the restart")
        wait_for(lambda: outbox(db, pipeline_id) == [("webhook-1", "delivered", 2)], 30, "the outbox says so")
        time.sleep(3)  # nothing more comes
        assert server.terminate() == 0, server.text()[-3000:]
    finally:
        server.stop()
        scrub(podman_user, data_dir)
    [(headers, body)] = hook.accepted
    assert body["event"] == "failure" and body["pipeline"]["id"] == pipeline_id
    assert headers["X-Forgeci-Delivery"] == hook.seen[0]["delivery"] == body["delivery"]  # the same message
    [job] = body["pipeline"]["failed_jobs"]
    assert job["step"] == "test" and job["exit_code"] == 1 and "FAILED the-check" in job["log"]
    assert "deploy key is ***" in job["log"]
    assert all(SECRET not in json.dumps(seen) for seen in hook.seen)
    assert SECRET not in server.text()
