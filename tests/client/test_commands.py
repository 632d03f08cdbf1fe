"""The client commands of the CLI against a live server: output, exit codes, `logs -f` across dropped connections."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.keys import StreamTiming
from config.settings import Settings
from forgeci_cli import main
from runner.errors import PipelineNotFound
from runner.models import JobState
from tests.bot.api_helpers import (
    TOKEN,
    DroppingProxy,
    LiveServer,
    api_settings,
    enqueue,
    finish,
    free_port,
    live_server,
    wait_until,
    write_log,
)
from tests.conftest import repo_maker, with_runner
from tests.fake_engine import FakeEngine, Script

__all__ = ["api_settings"]

FAST = StreamTiming(keepalive=0.2, check=0.1)
MakeRepo = Callable[..., tuple[Path, str]]


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[str | None], None]:
    def set_token(token: str | None) -> None:
        if token is None:
            monkeypatch.delenv("FORGECI_API_TOKEN", raising=False)
        else:
            monkeypatch.setenv("FORGECI_API_TOKEN", token)

    set_token(None)
    return set_token


def test_submit_jobs_status_cancel_retry(api_settings: Settings, token_env: Callable[[str | None], None],
                                         make_repo: MakeRepo, capsys: pytest.CaptureFixture[str]) -> None:
    repo, _ = make_repo({".forgeci.toml": '[[steps]]\nname = "s"\nrun = "true"\n'})
    with live_server(api_settings) as server:
        url = ["--server", server.url]
        assert main(["submit", "--repo", str(repo), "--ref", "main", "--priority", "8", *url]) == 0
        out = capsys.readouterr().out
        assert out.startswith("job 1 queued: ") and f"{server.url}/dashboard/jobs/1" in out
        assert main(["jobs", *url]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].split()[:3] == ["ID", "STATE", "PRIO"] and table[1].split()[:3] == ["1", "queued", "8"]
        assert main(["status", "1", *url]) == 0
        assert "job 1: queued" in capsys.readouterr().out
        assert main(["status", "1", "--json", *url]) == 0
        assert json.loads(capsys.readouterr().out)["spec"]["priority"] == 8
        assert main(["cancel", "1", *url]) == 0
        assert capsys.readouterr().out.strip() == "job 1 cancelled"
        assert main(["cancel", "1", *url]) == 1  # a finished job: the command failed
        assert "cannot cancel job 1" in capsys.readouterr().err
        assert main(["retry", "1", *url]) == 0
        assert capsys.readouterr().out.startswith("job 2 queued (retry of job 1)")
        assert main(["status", "99", *url]) == 2
        assert "job 99 not found" in capsys.readouterr().err
        assert main(["submit", "--repo", "r", "--ref", "main", "--priority", "12", *url]) == 2
        assert "priority" in capsys.readouterr().err
        two = '[jobs.a]\nsteps = [{ run = "true" }]\n[jobs.b]\nneeds = ["a"]\nsteps = [{ run = "true" }]\n'
        diamond, _ = make_repo({".forgeci.toml": two})
        assert main(["submit", "--repo", str(diamond), "--ref", "main", *url]) == 0
        assert capsys.readouterr().out.startswith("pipeline 2 queued with 2 jobs (3, 4): ")  # a retry makes no pipeline


def test_an_unreachable_server_or_a_wrong_token_exit_2_with_a_clear_message(
        api_settings: Settings, token_env: Callable[[str | None], None], capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    for argv in (["jobs"], ["status", "1"], ["logs", "1"], ["cancel", "1"], ["submit", "--repo", "r", "--ref", "m"]):
        assert main([*argv, "--server", dead]) == 2
        err = capsys.readouterr().err
        assert f"cannot reach the forgeci server at {dead}" in err and "forgeci serve" in err
    assert main(["jobs", "--server", "ftp://x"]) == 2
    with live_server(api_settings, {"FORGECI_API_TOKEN": TOKEN}) as server:
        token_env("wrong")
        assert main(["cancel", "1", "--server", server.url]) == 2
        err = capsys.readouterr().err
        assert "refused the API token" in err and "FORGECI_API_TOKEN" in err and "wrong" not in err
        token_env(TOKEN)
        assert main(["submit", "--repo", "r", "--ref", "main", "--server", server.url]) == 0  # accepted
        out = capsys.readouterr().out
        assert out.startswith("pipeline 1 is still planning (cannot fetch the pipeline: ") and "keeps trying" in out


def test_logs_prints_the_log_and_logs_f_survives_dropped_connections(
        api_settings: Settings, token_env: Callable[[str | None], None], capsys: pytest.CaptureFixture[str]) -> None:
    with live_server(api_settings, timing=FAST) as server:
        runtime = server.runtime
        done = enqueue(runtime.queue)
        server.call(lambda: _write(server, done, ["\x1b[32mok\x1b[0m", "two"]))
        finish(runtime.queue, done)
        assert main(["logs", str(done), "--server", server.url]) == 0
        assert capsys.readouterr().out == "\x1b[32mok\x1b[0m\ntwo\n"

        job_id = enqueue(runtime.queue)
        runtime.queue.claim("test-runner", 60)
        lines = [f"step output {i:04d} " + "y" * 30 for i in range(400)]

        async def produce() -> None:
            await asyncio.sleep(0.3)
            log = write_log(runtime, job_id, [])
            for i, text in enumerate(lines):
                log.write("build", "stdout", f"{text}\n".encode())
                if i % 25 == 0:
                    await asyncio.sleep(0.02)
            log.close()
            runtime.queue.complete(job_id, JobState.failure, "step build exited 1", runner_id="test-runner")

        proxy = DroppingProxy(server.port, budget=5000)
        server.call(proxy.start)
        producer = asyncio.run_coroutine_threadsafe(produce(), server.loop)
        assert main(["logs", str(job_id), "-f", "--server", f"http://127.0.0.1:{proxy.port}"]) == 1  # it failed
        producer.result(30)
        server.call(proxy.close)
        captured = capsys.readouterr()
        assert captured.out.splitlines() == lines
        assert f"job {job_id}: failure" in captured.err and "step build exited 1" in captured.err
        assert proxy.connections > 3


async def _write(server: LiveServer, job_id: int, lines: list[str]) -> None:
    write_log(server.runtime, job_id, lines).close()


def test_submit_follow_runs_a_job_to_its_end(settings: Settings, make_repo: Callable[..., tuple[Path, str]],
                                             token_env: Callable[[str | None], None],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    toml = '[[steps]]\nname = "greet"\nrun = "echo hello from $FORGECI_REF; echo err >&2"\n'
    good, sha = make_repo({".forgeci.toml": toml})
    bad, _ = make_repo({".forgeci.toml": '[[steps]]\nname = "fail"\nrun = "echo doomed; exit 3"\n'})
    engine = FakeEngine()
    engine.expect("echo hello from $FORGECI_REF; echo err >&2", Script(lines=["hello from $FORGECI_REF"], stderr=["err"]))
    engine.expect("echo doomed; exit 3", Script(exit_code=3, lines=["doomed"]))
    with live_server(with_runner(settings), workers=True, engine=engine) as server:
        code = main(["submit", "--repo", str(good), "--ref", "main", "--sha", sha, "--follow", "--server", server.url])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert "hello from main" in captured.out.splitlines() and "err" in captured.out.splitlines()
        assert "job 1 queued" in captured.err and "job 1: success" in captured.err
        assert main(["submit", "--repo", str(bad), "--ref", "main", "--follow", "--server", server.url]) == 1
        captured = capsys.readouterr()
        assert "doomed" in captured.out and "job 2: failure" in captured.err
    engine.check()



def test_submit_follow_waits_for_a_pipeline_still_planning_and_for_all_its_jobs(
        settings: Settings, shared_dir: Path, token_env: Callable[[str | None], None],
        capsys: pytest.CaptureFixture[str]) -> None:
    """The repository is not there when the submit's plan is tried: the answer is 202, --follow waits; it appears,
    the coordinator's next attempt plans two jobs; both logs are printed, each line prefixed with its job, and the
    exit is the pipeline's."""
    repo = shared_dir / "late"
    engine = FakeEngine()
    engine.expect("echo first", Script(lines=["first job here"]))
    engine.expect("exit 4", Script(exit_code=4))
    with live_server(with_runner(settings), workers=True, engine=engine) as server:

        def create_once_refused() -> None:
            wait_until(lambda: _attempts(server, 1) >= 1)  # the submit's own attempt failed
            make = repo_maker(shared_dir, shared=True)
            make({".forgeci.toml": '[jobs.a]\nsteps = [{ run = "echo first" }]\n'
                                   '[jobs.b]\nneeds = ["a"]\nsteps = [{ run = "exit 4" }]\n'}, name="late")

        creator = threading.Thread(target=create_once_refused)
        creator.start()
        code = main(["submit", "--repo", str(repo), "--ref", "main", "--follow", "--server", server.url])
        creator.join(10)
        captured = capsys.readouterr()
    assert code == 1, captured.err  # the first job passed; the pipeline failed
    out = captured.out.splitlines()
    assert "[a] first job here" in out and any(line.startswith("[b] ") for line in out)
    assert all(line.startswith(("[a] ", "[b] ")) for line in out), out
    err = captured.err
    assert "pipeline 1 is still planning (cannot fetch the pipeline: " in err
    assert "pipeline 1 queued with 2 jobs (1, 2): " in err and "/dashboard/pipelines/1" in err
    assert "[a] job 1: success" in err and "[b] job 2: failure" in err and "exit 4" in err
    assert "pipeline 1: failure (2 jobs, " in err
    engine.check()


def _attempts(server: LiveServer, pipeline_id: int) -> int:
    try:
        return server.runtime.queue.pipeline(pipeline_id).plan_attempts
    except PipelineNotFound:
        return 0
