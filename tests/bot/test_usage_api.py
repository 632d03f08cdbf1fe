"""GET /usage (JSON, CSV), GET /quotas, the Prometheus counters, and quota refusals end to end: a webhook's pipeline
over the month's minutes ends `error` with the quota in its commit status, an API submit is 429, and the next
month (fake clock) accepts the retry again."""

from __future__ import annotations

import asyncio
import calendar
import csv
import dataclasses
import io
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client.api import Client
from client.usage import usage
from config.quotas import CostSettings, QuotaRule
from config.settings import Settings
from runner.models import JobSpec, JobState, PipelineState
from runner.queue import Queue
from tests.bot.api_helpers import api_client, runtime_of
from tests.bot.test_pipeline_statuses import (
    CONTEXT,
    TOKENS,
    by_context,
    forge_settings,
    push,
)
from tests.bot.webhook_helpers import ENV, FakeForge, fake_forge, open_client
from tests.fake_engine import FakeEngine, Script
from tests.runner.test_pipelines import finished

__all__ = ["fake_forge"]

MakeRepo = Callable[..., tuple[Path, str]]
PIPELINE = '''
snapshot = "always"
[cache]
paths = ["deps"]
key_files = ["lock.txt"]
[jobs.build]
artifacts = { paths = ["dist/**"] }
steps = [{ run = "build" }]
[jobs.lint]
steps = [{ run = "lint" }]
'''
ROOT = Path(__file__).resolve().parents[2]
DEC = float(calendar.timegm((2026, 12, 10, 12, 0, 0)))
JAN = float(calendar.timegm((2027, 1, 2, 9, 0, 0)))
MESSAGE = "quota exceeded: 3000 of 3000 minutes this month (acme/*)"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def acme_repo(tmp_path: Path, make_local_repo: MakeRepo, files: dict[str, str]) -> tuple[Path, str]:
    (tmp_path / "acme").mkdir(exist_ok=True)
    return make_local_repo(files, "acme/app")


async def until(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return found


def stored(queue: Queue, store: Any, prefix: str) -> int:
    return sum(info.size for info in store.list(prefix))


async def test_the_report_s_minutes_and_bytes_are_the_attempts_and_the_store_s_objects(
        settings: Settings, make_local_repo: MakeRepo, tmp_path: Path) -> None:
    repo, _ = acme_repo(tmp_path, make_local_repo, {".forgeci.toml": PIPELINE, "lock.txt": "v1"})
    engine = FakeEngine()
    engine.on("build", Script(files={"dist/app.bin": "x" * 200_000, "deps/lib.txt": "dep" * 1000}))
    costs = CostSettings(per_minute=0.5, per_gb_month=100.0, currency="EUR")
    async with api_client(dataclasses.replace(settings, costs=costs), workers=True, engine=engine) as client:
        rt = runtime_of(client)
        answer = await client.post("/jobs/submit", json={"repo": str(repo), "ref": "main", "user": "ada"})
        assert answer.status == 201, await answer.text()
        jobs = await finished(rt, (await answer.json())["pipeline"])
        assert {j.state for j in jobs} == {JobState.success}
        report = await (await client.get("/usage?by=repo")).json()
        [row] = report["rows"]
        assert row["key"] == "acme/app" and (row["pipelines"], row["jobs"], row["success_rate"]) == (1, 2, 1.0)
        seconds = sum((j.finished_at or 0) - (j.started_at or 0) for j in jobs)
        assert abs(row["minutes"] - seconds / 60) < 0.001 and row["retry_minutes"] == 0
        kinds = {"caches": "caches/", "snapshots": "snapshots/", "artifacts": "artifacts/"}
        actual = {kind: stored(rt.queue, rt.store, prefix) for kind, prefix in kinds.items()}
        assert all(actual.values()), actual  # a cache, two snapshots and an artifact were kept
        assert {k: row["bytes"][k] for k in kinds} == actual and row["bytes"]["total"] == sum(actual.values())
        assert abs(row["cost"] - (seconds / 60 * 0.5 + sum(actual.values()) / 1e9 * 100)) < 0.001
        assert report["currency"] == "EUR"
        assert abs(sum(d["minutes"] for d in report["daily"]) - report["totals"]["minutes"]) < 0.001
        by_user = await (await client.get("/usage?by=user")).json()
        assert [r["key"] for r in by_user["rows"]] == ["ada"]
        response = await client.get("/usage?by=owner&format=csv")
        assert response.status == 200 and response.content_type == "text/csv"
        [parsed] = list(csv.DictReader(io.StringIO(await response.text())))
        assert parsed["key"] == "acme" and float(parsed["minutes"]) == row["minutes"]
        assert int(parsed["stored_bytes"]) == sum(actual.values())
        prometheus = await (await client.get("/metrics", headers={"Accept": "text/plain"})).text()
        assert "# TYPE forgeci_runner_minutes_total counter" in prometheus
        assert f'forgeci_stored_bytes{{kind="artifacts"}} {actual["artifacts"]}' in prometheus
        for query in ("by=team", "format=xml", "from=2026-13-01", "from=2026-12-05&to=2026-12-01", "month=12",
                      "month=2026-12&from=2026-12-01", "colour=red", "to=9999-12-31", "month=0001-01"):
            bad = await client.get(f"/usage?{query}")
            assert bad.status == 400, query
            assert set(await bad.json()) == {"error", "detail"}
        old = await (await client.get("/usage?month=2025-01")).json()
        assert old["rows"] and all(r["minutes"] == 0 for r in old["rows"])  # bytes only: nothing ran then
        await the_cli_prints_it(str(client.make_url("")).rstrip("/"), row)


async def the_cli_prints_it(server: str, row: dict[str, Any]) -> None:
    async with Client(server, None) as api:
        table = io.StringIO()
        assert await usage(api, "repo", None, False, table) == 0
        lines = table.getvalue().splitlines()
        assert lines[0].startswith("usage by repo, ") and any(line.startswith("acme/app ") for line in lines)
        text = io.StringIO()
        await usage(api, "user", None, True, text)
        [parsed] = list(csv.DictReader(io.StringIO(text.getvalue())))
        assert parsed["key"] == "ada" and float(parsed["minutes"]) == row["minutes"]
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "forgeci_cli", "usage", "--month", "12", "--server", server,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
    _, err = await asyncio.wait_for(cli.communicate(), 60)
    assert cli.returncode == 2 and "month" in err.decode() and "Traceback" not in err.decode(), err


async def test_a_month_s_minutes_used_up_refuse_webhook_and_api_pipelines_until_the_next_month(
        settings: Settings, fake_forge: FakeForge, make_local_repo: MakeRepo, tmp_path: Path) -> None:
    repo, sha = acme_repo(tmp_path, make_local_repo, {".forgeci.toml": '[[steps]]\nrun = "spend"\n'})
    engine = FakeEngine()
    engine.on("spend", Script(delay=0.5))
    quotas = dataclasses.replace(forge_settings(settings, fake_forge),
                                 quotas=(QuotaRule("acme/*", minutes_per_month=3000, max_running=2),))
    client = await open_client(quotas, {**ENV, **TOKENS}, workers=True, engine=engine)
    try:
        queue = runtime_of(client).queue
        clock = Clock(DEC)
        queue._clock = clock  # the queue's clock: attempts' ends, and which month it is
        first = await client.post("/jobs/submit", json={"repo": str(repo), "ref": "main"})
        assert first.status == 201, await first.text()
        [job_id] = (await first.json())["jobs"]
        await until(lambda: queue.get(job_id).state is JobState.running, "the job to start")
        clock.now += 3000 * 60  # it runs for 3000 minutes of the fake clock
        await until(lambda: queue.get(job_id).state.is_terminal, "the job to end")
        quota = (await (await client.get("/quotas")).json())["quotas"][0]
        assert (quota["match"], quota["minutes"], quota["minutes_per_month"]) == ("acme/*", 3000, 3000)

        pipeline_id = await push(client, repo, sha)  # the webhook's pipeline: recorded, then refused
        await until(lambda: queue.pipeline(pipeline_id).state.is_terminal, "the refused pipeline to end")
        record = queue.pipeline(pipeline_id)
        assert (record.state, record.error, record.job_ids) == (PipelineState.error, MESSAGE, ())
        posts = by_context(await fake_forge.wait_statuses(1))
        assert posts[CONTEXT][-1]["state"] == "error" and MESSAGE in posts[CONTEXT][-1]["description"]

        refused = await client.post("/jobs/submit", json={"repo": str(repo), "ref": "main"})
        assert refused.status == 429
        assert await refused.json() == {"error": "quota exceeded", "detail": MESSAGE}
        assert (await client.post(f"/pipelines/{pipeline_id}/retry")).status == 429
        assert (await client.post("/jobs/retry", json={"id": job_id})).status == 429  # a job's retry too

        clock.now = JAN  # a new calendar month
        again = await client.post(f"/pipelines/{pipeline_id}/retry")
        assert again.status == 201, await again.text()
        retried = (await again.json())["pipeline"]
        await until(lambda: queue.pipeline(retried).state.is_terminal, "the retry to end")
        assert queue.pipeline(retried).state is PipelineState.success
        assert (await client.post("/jobs/submit", json={"repo": str(repo), "ref": "main"})).status == 201
        december = await (await client.get("/usage?month=2026-12")).json()
        assert december["rows"][0]["minutes"] == 3000
    finally:
        await client.close()


async def test_the_dashboard_page_draws_minutes_per_repository_a_daily_series_and_the_quotas(
        settings: Settings) -> None:
    quotas = (QuotaRule("acme/*", max_running=4, minutes_per_month=3000), QuotaRule("*/*", per_user_running=2))
    async with api_client(dataclasses.replace(settings, quotas=quotas), workers=False) as client:
        queue = runtime_of(client).queue
        clock = Clock(time.time())
        queue._clock = clock
        for repo, minutes in (("https://h/acme/app.git", 30), ("https://h/acme/web.git", 10), ("https://h/o/x", 5)):
            job_id = queue.enqueue(JobSpec(repo=repo, ref="main", meta={"user": "ada"}))
            assert queue.claim("r", 60) is not None
            clock.now += minutes * 60
            queue.complete(job_id, JobState.success, runner_id="r")
        running = queue.enqueue(JobSpec(repo="https://h/acme/app.git", ref="main"))
        assert queue.claim("r", 60) is not None and queue.get(running).state is JobState.running
        response = await client.get("/dashboard/usage")
        assert response.status == 200
        html = await response.text()
        bars = re.findall(r'data-key="([^"]+)"><span class="hbar-key"[^>]*>[^<]*</span><span class="hbar-track">'
                          r'<span class="hbar-fill" style="width: ([0-9.]+)%', html)
        assert bars == [("acme/app", "100.00"), ("acme/web", "33.33"), ("o/x", "16.67")]
        assert html.count('class="bar ok day"') >= 1 and "Runner minutes per day" in html
        assert re.search(r'data-match="acme/\*">.*?<span class="used">1 / 4</span>', html, re.DOTALL)
        assert re.search(r'data-match="acme/\*">.*?<span class="used">40 / 3000</span>', html, re.DOTALL)
        owners = await (await client.get("/dashboard/usage?by=owner")).text()
        assert 'data-key="acme"' in owners and 'data-key="o"' in owners
        assert (await client.get("/dashboard/usage?by=team")).status == 400


async def test_the_dashboard_s_retry_over_a_quota_says_so_and_records_nothing(settings: Settings) -> None:
    from tests.bot.test_dashboard import csrf_of

    quotas = (QuotaRule("acme/*", max_queued=1),)
    async with api_client(dataclasses.replace(settings, quotas=quotas), workers=False) as client:
        queue = runtime_of(client).queue
        done = queue.create_pipeline(JobSpec(repo="https://h/acme/app.git", ref="main"))
        queue.plan_failed(done, "cannot fetch the pipeline: gone", retry_in=None)
        queue.create_pipeline(JobSpec(repo="https://h/acme/app.git", ref="main"))  # waiting: the quota is full
        path = f"/dashboard/pipelines/{done}"
        response = await client.post(f"{path}/retry", data={"csrf": await csrf_of(client, path)},
                                     allow_redirects=False)
        assert response.status == 429
        text = await response.text()
        assert "Quota exceeded" in text and "quota exceeded: 1 of 1 pipelines queued (acme/*)" in text
        assert len(queue.list_pipelines()[0]) == 2
        job_id = queue.enqueue(JobSpec(repo="https://h/acme/app.git", ref="main"))
        queue.cancel(job_id)
        page_path = f"/dashboard/jobs/{job_id}"
        again = await client.post(f"{page_path}/retry", data={"csrf": await csrf_of(client, page_path)},
                                  allow_redirects=False)
        assert again.status == 429 and "1 of 1 pipelines queued" in await again.text()
