"""Secrets everywhere a person or a client looks: a job prints its secret, then every surface is searched for it.

The job log's masking (split writes, base64) is unit-tested in tests/runner/test_logs.py and end to end in
tests/runner/test_executor.py; this sweep checks what the server hands out afterwards: the API's JSON and SSE,
errors, metrics, /healthz, the dashboard, the CLI, the TUI's job screen, and the server's own log.
"""

from __future__ import annotations

import base64
import http.client
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from client.api import Client
from tests.reliability.harness import (
    API_TOKEN, REPO_ROOT, WEBHOOK_SECRET, Ledger, ServeProcess, free_port, plural, serving, wait_for, write_config,
)
from tests.reliability.report import Row
from tests.tui.conftest import wait_until
from tests.tui.test_job_screen import log_texts, open_job
from tui.app import ForgeciApp

pytestmark = [pytest.mark.slow, pytest.mark.podman]

MakeRepo = Callable[..., tuple[Path, str]]
JOB_SECRET = "dk-Secret-Part-7f3e9a51c2"
S3_SECRET = "s3-secret-key-0b8d1e77aa"
GIT_TOKEN = "git-token-5c61f0e2d9"
SECRETS = {"job secret": JOB_SECRET, "API token": API_TOKEN, "webhook secret": WEBHOOK_SECRET,
           "S3 secret key": S3_SECRET, "git token": GIT_TOKEN}
PIPELINE = '''secrets = ["DEPLOY_KEY"]
snapshot = "never"
[[steps]]
name = "leak"
run = """
echo "whole $DEPLOY_KEY"
printf "split %s" "${DEPLOY_KEY%%Part*}"; sleep 0.3; echo "Part${DEPLOY_KEY#*Part}"
echo "b64 $(printf %s "$DEPLOY_KEY" | base64)"
echo "length ${#DEPLOY_KEY}"
exit 1
"""
'''


def forms(value: str) -> list[str]:
    """The value and its base64 encodings (the forms a log or a URL would carry)."""
    raw = value.encode()
    return [value, base64.b64encode(raw).decode().rstrip("="), base64.urlsafe_b64encode(raw).decode().rstrip("=")]


def leaks(text: str) -> list[str]:
    return [f"{name} ({form})" for name, value in SECRETS.items() for form in forms(value) if form in text]


def raw_get(port: int, path: str, headers: dict[str, str] | None = None, read_for: float | None = None) -> str:
    """A GET's whole answer (status line, headers, body); a stream that never ends is read for `read_for` seconds."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=read_for or 30)
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    head = f"{response.status} {response.reason}\n{response.headers}"
    chunks = []
    try:
        while data := response.read1(65536) if read_for else response.read():
            chunks.append(data)
            if not read_for:
                break
    except TimeoutError:
        pass
    conn.close()
    return head + b"".join(chunks).decode(errors="replace")


async def test_secrets_never_leave_the_log_masking(make_repo: MakeRepo, shared_dir: Path, busybox_image: str,
                                                   report: Callable[[str], Row]) -> None:
    row = report("Secrets: a job prints its secret whole, split across two writes and in base64; the server also "
                 "holds an API token, a webhook secret, an S3 secret key and a git token")
    repo, sha = make_repo({".forgeci.toml": PIPELINE})
    data_dir, port = shared_dir / "data", free_port()
    config = write_config(shared_dir / "forgeci.toml", data_dir, port, busybox_image,
                          secrets={"DEPLOY_KEY": {"env": "FORGECI_SECRET_DEPLOY_KEY", "repos": ["*"]}},
                          storage={"url": f"s3://forgeci?endpoint=http://127.0.0.1:{free_port()}"})
    env = {"FORGECI_API_TOKEN": API_TOKEN, "FORGECI_GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
           "FORGECI_SECRET_DEPLOY_KEY": JOB_SECRET, "FORGECI_S3_ACCESS_KEY": "s3-access", "FORGECI_S3_SECRET_KEY":
           S3_SECRET, "FORGECI_GIT_TOKEN": GIT_TOKEN}
    server = ServeProcess(config, port, shared_dir / "serve.log", env)
    ledger = Ledger()
    seen: dict[str, str] = {}
    bearer = {"Authorization": f"Bearer {API_TOKEN}"}
    with serving(server):
        status, body = server.request("POST", "/jobs/submit", {"repo": str(repo), "ref": "main", "sha": sha})
        assert status == 201
        job_id = body["id"]
        ledger.submitted_job(job_id)
        wait_for(lambda: server.request("GET", f"/jobs/status?id={job_id}")[1]["state"] == "failure", 120,
                 "the job finished")
        for path in ["/healthz", "/openapi.json", "/jobs", "/jobs?status=failure", f"/jobs/status?id={job_id}",
                     f"/jobs/logs?id={job_id}&follow=false", f"/jobs/logs?id={job_id}", "/metrics",
                     "/metrics?format=prometheus", "/cache/stats", "/dashboard", f"/dashboard/jobs/{job_id}",
                     f"/dashboard/jobs/{job_id}/summary", f"/dashboard/jobs/{job_id}/log.txt",
                     "/dashboard/fragments/overview", "/jobs/status?id=999999", "/jobs/status?id=x", "/nowhere"]:
            seen[f"GET {path}"] = raw_get(port, path, bearer)
        seen["GET /events"] = raw_get(port, "/events", bearer, read_for=1.0)
        for method, path, payload, token in [
            ("POST", "/jobs/cancel", {"id": job_id}, "wrong"), ("POST", "/jobs/retry", {"id": 999999}, API_TOKEN),
            ("POST", "/jobs/priority", {"id": job_id, "priority": 3}, API_TOKEN),
            ("POST", "/jobs/submit", {}, API_TOKEN),
            ("POST", "/admin/maintenance", None, API_TOKEN), ("DELETE", "/cache/none", None, API_TOKEN),
        ]:
            seen[f"{method} {path}"] = str(server.request(method, path, payload, token=token))
        assert "whole ***" in seen[f"GET /jobs/logs?id={job_id}&follow=false"], "the job's output is not in its log"
        for words in (["status", str(job_id)], ["logs", str(job_id)], ["jobs"]):
            result = subprocess.run([sys.executable, "-m", "forgeci_cli", *words, "--server", server.url],
                                    capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
                                    env={**os.environ, "FORGECI_API_TOKEN": API_TOKEN})
            seen[f"forgeci {' '.join(words)}"] = result.stdout + result.stderr
        async with Client(server.url, API_TOKEN) as client:
            app = ForgeciApp(client)
            async with app.run_test(size=(160, 50)) as pilot:
                screen = await open_job(app, pilot, job_id)
                await wait_until(pilot, lambda: screen.job is not None and screen.log_ended)
                lines = log_texts(screen)
                seen["the TUI's job screen"] = app.export_screenshot() + "\n".join(lines)
        assert any("split ***" in line for line in lines), lines
    seen["the server's own log"] = server.text()
    text = seen[f"GET /jobs/logs?id={job_id}&follow=false"]
    assert "whole ***" in text and "split ***" in text and "b64 ***" in text, text
    assert f"length {len(JOB_SECRET)}" in text  # the job did get the secret
    found = {where: leaks(answer) for where, answer in seen.items() if leaks(answer)}
    assert found == {}, f"secrets found: {found}"
    row.happened = (f"the log shows `whole ***`, `split ***`, `b64 ***`; none of the five secrets, nor their base64 "
                    f"forms, in {plural(len(seen), 'surface')}: API JSON and SSE (log, events), errors, metrics, "
                    f"/healthz, dashboard pages and raw log, the CLI, the TUI's job screen, the server's own log")
    assert row.count(ledger, data_dir / "queue.db").total == 0
