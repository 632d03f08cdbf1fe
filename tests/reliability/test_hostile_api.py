"""Schemathesis over the whole API of a `forgeci serve` that runs jobs, watched at the wire by a recording proxy.

tests/bot/test_api_fuzz.py runs schemathesis against the app without a container engine; this run reuses it
against a server whose workers really run what schemathesis submits, and counts what it was told it created.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.bot.test_api_fuzz import run_schemathesis
from tests.reliability.harness import (
    API_TOKEN, SECRET_ENV, Ledger, ServeProcess, free_port, jobs_of, leftovers, plural, serving, wait_for, read_db, write_config,
)
from tests.reliability.proxy import FaultProxy
from tests.reliability.report import Row
from runner.podman_user import PodmanUser

pytestmark = [pytest.mark.slow, pytest.mark.podman]


async def test_schemathesis_over_a_server_running_jobs(shared_dir: Path, busybox_image: str, podman_user: PodmanUser,
                                                       report: Callable[[str], Row]) -> None:
    row = report("Hostile API input: schemathesis over every operation of a server whose workers run the jobs it "
                 "submits (SSE streams excepted: tests/bot/test_sse.py)")
    data_dir, port = shared_dir / "data", free_port()
    db = data_dir / "queue.db"
    config = write_config(shared_dir / "forgeci.toml", data_dir, port, busybox_image, server={"protect_reads": True})
    # Every forge's webhook configured: an unconfigured one answers 503 on purpose, which the no-5xx check rejects.
    forges = {"FORGECI_GITEA_WEBHOOK_SECRET": "hostile-gitea", "FORGECI_GITLAB_WEBHOOK_SECRET": "hostile-gitlab"}
    server = ServeProcess(config, port, shared_dir / "serve.log", env={**SECRET_ENV, **forges})
    ledger = Ledger()
    workdir = shared_dir / "schemathesis"
    workdir.mkdir()
    with serving(server):
        proxy = FaultProxy(server.url)
        await proxy.start()
        try:
            result = await asyncio.to_thread(run_schemathesis, proxy.endpoint, workdir, "--url", proxy.endpoint,
                                             "-H", f"Authorization: Bearer {API_TOKEN}")
        finally:
            await proxy.close()
        for seen in proxy.seen:
            if seen.created:  # a submit's 201 names all its pipeline's jobs; a retry's, its new job
                answer = json.loads(seen.created)
                for job_id in answer.get("jobs") or [answer["id"]]:
                    ledger.submitted_job(job_id)

        def settled() -> bool:
            return read_db(db, "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')") == [(0,)]

        wait_for(settled, 120, "the submitted jobs finished")
        status, health = server.request("GET", "/healthz")
        assert server.terminate() == 0, server.text()[-3000:]
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    errors = [(s.method, s.path, s.status) for s in proxy.seen if s.status >= 500]
    assert errors == [], errors
    assert status == 200, health
    assert "unhandled error" not in server.text(), server.text()[-3000:]
    assert leftovers(podman_user, data_dir) == []
    statuses: dict[int, int] = {}
    for seen in proxy.seen:
        statuses[seen.status] = statuses.get(seen.status, 0) + 1
    states: dict[str, int] = {}
    for job in jobs_of(db, ledger.jobs).values():
        states[job.state] = states.get(job.state, 0) + 1
    row.happened = (f"{plural(len(proxy.seen), 'request')}, answers by status {dict(sorted(statuses.items()))}: no "
                    f"5xx, every answer as the OpenAPI document says; the {plural(len(ledger.jobs), 'job')} it "
                    f"created ran and ended {dict(sorted(states.items()))}; the server stayed healthy")
    assert row.count(ledger, db).total == 0
