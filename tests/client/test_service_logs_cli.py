"""`forgeci logs JOB --service NAME [-f]` and Client.read_log(service=) against a live server: a kept service log,
one followed while its job runs, and an unknown service named with the ones the job kept."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from bot.keys import StreamTiming
from client.api import Client
from client.models import LogEnd, LogEntry
from config.settings import Settings
from forgeci_cli import main
from runner.logs import JobLog, Masker
from runner.models import JobState
from runner.runtime import Runtime
from tests.bot.api_helpers import api_settings, enqueue, finish, live_server

__all__ = ["api_settings"]

FAST = StreamTiming(keepalive=0.2, check=0.1)


def service_log(runtime: Runtime, job_id: int, name: str, lines: list[str]) -> JobLog:
    path = runtime.layout.service_log_file(job_id, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = JobLog(path, job_id, None, Masker.empty())
    for line in lines:
        log.write(name, "stdout", f"{line}\n".encode())
    return log


def test_logs_service_prints_a_kept_service_log_and_names_the_services_for_an_unknown_one(
        api_settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    with live_server(api_settings) as server:
        runtime = server.runtime
        job_id = enqueue(runtime.queue)
        service_log(runtime, job_id, "db", ["database system is ready", "two"]).close()
        service_log(runtime, job_id, "redis", ["PONG"]).close()
        finish(runtime.queue, job_id, JobState.failure)
        url = ["--server", server.url]
        assert main(["logs", str(job_id), "--service", "db", *url]) == 0
        assert capsys.readouterr().out == "database system is ready\ntwo\n"
        assert main(["logs", str(job_id), "--service", "redis", "-f", *url]) == 1  # -f: the job's result
        captured = capsys.readouterr()
        assert captured.out == "PONG\n" and f"job {job_id}: failure" in captured.err
        assert main(["logs", str(job_id), "--service", "cache", *url]) == 2
        err = capsys.readouterr().err
        assert "kept no log of service 'cache'" in err and "db, redis" in err
        assert main(["logs", "999", "--service", "db", *url]) == 2
        assert "job 999 not found" in capsys.readouterr().err

        async def read() -> list[LogEntry | LogEnd]:
            async with Client(server.url) as client:
                return [item async for item in client.read_log(job_id, service="db", after=1, follow=False)]

        items = asyncio.run(read())
        assert [i.text for i in items if isinstance(i, LogEntry)] == ["two"] and isinstance(items[-1], LogEnd)


def test_logs_service_f_follows_a_running_jobs_service_until_the_job_ends(
        api_settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    with live_server(api_settings, timing=FAST) as server:
        runtime = server.runtime
        job_id = enqueue(runtime.queue)
        runtime.queue.claim("test-runner", 60)
        log = service_log(runtime, job_id, "db", ["starting"])

        def produce() -> None:  # lines written while the follower polls, then the job ends
            for i in range(5):
                time.sleep(0.1)
                log.write("db", "stdout", f"live {i}\n".encode())
            log.close()
            runtime.queue.complete(job_id, JobState.success, runner_id="test-runner")

        producer = threading.Thread(target=produce)
        producer.start()
        assert main(["logs", str(job_id), "--service", "db", "-f", "--server", server.url]) == 0
        producer.join()
        assert capsys.readouterr().out.splitlines() == ["starting", *(f"live {i}" for i in range(5))]
