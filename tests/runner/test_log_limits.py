"""runner.max_log_bytes: a flooding job's log stops at the limit with a marker, counts what it dropped, and says so
in /metrics; logs go with their jobs, and logs left without a job go too."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from bot.app import create_app
from bot.keys import RUNTIME
from config.settings import Settings
from runner.layout import DataLayout
from runner.logs import JobLog, LogHub, Masker, read_log
from runner.maintenance import DAY, MaintenanceParts, prune
from runner.models import JobSpec, JobState
from runner.queue import Queue
from runner.store import FileStore
from tests.fake_engine import FakeEngine, Script
from tests.runner.test_executor_logic import steps, wait_terminal

MakeRepo = Callable[..., tuple[Path, str]]


def stored(path: Path) -> int:
    """Bytes of the log's step output lines as stored (what the limit counts)."""
    return sum(len(line) for line in path.read_bytes().splitlines(keepends=True) if b'"o":"system"' not in line)


def test_step_output_stops_at_the_limit_with_one_marker_and_a_count(tmp_path: Path) -> None:
    hub = LogHub()
    path = tmp_path / "1.log"
    with JobLog(path, 1, hub, Masker.empty(), clock=lambda: 5.0, max_bytes=2000) as log:
        log.system("job 1, attempt 1")
        for i in range(200):
            log.write("build", "stdout", f"line {i:04d} of a chatty build\n".encode())
        log.flush("build")
        log.system("job 1: success")
    lines = list(read_log(path))
    texts = [line.text for line in lines]
    kept = [t for t in texts if t.startswith("line ")]
    assert 0 < len(kept) < 200 and kept == [f"line {i:04d} of a chatty build" for i in range(len(kept))]
    assert stored(path) <= 2000
    markers = [line for line in lines if "log limit reached" in line.text]
    assert len(markers) == 1 and markers[0].stream == "system" and markers[0].step == "build"
    assert texts.index(markers[0].text) == len(kept) + 1  # right where the output stops
    dropped = 200 - len(kept)
    assert log.dropped_lines == dropped and hub.dropped_lines == dropped
    # forgeci's own lines are kept past the limit: the outcome, then the count of what went.
    assert texts[-2:] == ["job 1: success",
                          f"{dropped} line(s) ({log.dropped_bytes} bytes) of step output were dropped past the log "
                          "limit (runner.max_log_bytes = 2000)"]
    assert [line.n for line in lines] == list(range(1, len(lines) + 1))  # numbering has no holes


def test_no_limit_and_a_retry_gets_a_budget_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "2.log"
    with JobLog(path, 2, None, Masker.empty(), max_bytes=0) as log:
        for _ in range(500):
            log.write("s", "stdout", b"x" * 100 + b"\n")
    assert log.dropped_lines == 0 and sum(1 for _ in read_log(path)) == 500
    for attempt in (1, 2):  # an automatic retry opens the same file: its output is not all dropped at once
        with JobLog(path, 2, None, Masker.empty(), max_bytes=1000) as log:
            log.write("s", "stdout", f"attempt {attempt}\n".encode())
        assert log.dropped_lines == 0
    assert [line.text for line in read_log(path)][-2:] == ["attempt 1", "attempt 2"]


async def test_a_flooding_job_is_cut_and_metrics_count_the_dropped_lines(
        fake_settings: Settings, make_local_repo: MakeRepo) -> None:
    repo = make_local_repo({"README": "hi\n"})[0]
    settings = dataclasses.replace(fake_settings, runner=dataclasses.replace(fake_settings.runner,
                                                                             max_log_bytes=4096))
    engine = FakeEngine()
    engine.on("flood", Script(lines=[f"{i} " + "y" * 60 for i in range(300)]))
    app = create_app(settings, {}, workers=True, engine=engine)
    async with TestClient(TestServer(app)) as client:
        runtime = app[RUNTIME]
        job_id = await runtime.control.submit(JobSpec(repo=str(repo), ref="main",
                                                      pipeline=steps({"name": "flood", "run": "flood"})))
        job = await wait_terminal(runtime, job_id)
        assert job.state is JobState.success  # the limit cuts the log, not the job
        log = list(read_log(runtime.layout.log_file(job_id)))
        assert stored(runtime.layout.log_file(job_id)) <= 4096
        assert any("log limit reached" in line.text for line in log)
        dropped = runtime.hub.dropped_lines
        assert 200 < dropped < 300
        response = await client.get("/metrics", params={"format": "prometheus"})
        text = await response.text()
        assert "# TYPE forgeci_log_lines_dropped_total counter" in text
        assert f"forgeci_log_lines_dropped_total {dropped}" in text.splitlines()
        body = await (await client.get("/metrics")).json()
        assert body["log_lines_dropped"] == dropped


def test_logs_go_with_their_jobs_and_orphaned_old_logs_go_too(fake_settings: Settings, tmp_path: Path) -> None:
    layout = DataLayout(tmp_path / "data")
    layout.logs.mkdir(parents=True)
    now = time.time()
    clock_value = [now - 30 * DAY]
    with Queue(layout.db, clock=lambda: clock_value[0]) as queue:
        old = queue.enqueue(JobSpec(repo="r", ref="main"))
        queue.cancel(old)  # finished 30 days ago
        clock_value[0] = now
        kept = queue.enqueue(JobSpec(repo="r", ref="main"))  # still queued
        for job_id in (old, kept, 9001, 9002):
            layout.log_file(job_id).write_text("{}\n")
        ancient = now - 30 * DAY
        for job_id in (kept, 9001):
            os.utime(layout.log_file(job_id), (ancient, ancient))
        (layout.logs / "notes.txt").write_text("not a log\n")
        os.utime(layout.logs / "notes.txt", (ancient, ancient))
        store = FileStore(layout.store)
        report = prune(MaintenanceParts(fake_settings, layout, queue, store), now=now)
    assert report.jobs == 1 and report.logs == 2, report  # job `old`'s log, and 9001's (no job, untouched 30 days)
    assert sorted(p.name for p in layout.logs.iterdir()) == sorted([f"{kept}.log", "9002.log", "notes.txt"])
