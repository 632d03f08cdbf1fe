"""The CLI's pipeline commands against a live server on the fake engine: `pipelines`, `pipeline ID`, cancel and
retry with --pipeline, `submit --follow` of a pipeline of many jobs; their output and exit codes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from config.settings import Settings
from forgeci_cli import main
from runner.models import JobState
from tests.bot.api_helpers import api_settings, finish, live_server
from tests.conftest import with_runner
from tests.fake_engine import FakeEngine, Script

__all__ = ["api_settings"]

MakeRepo = Callable[..., tuple[Path, str]]
DIAMOND = ''.join(f'[jobs.{name}]\nneeds = {needs}\nsteps = [{{ name = "{name}", run = "step-{name}" }}]\n'
                  for name, needs in (("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])))
MATRIX = ('[jobs.lint]\nsteps = [{ name = "ruff", run = "lint" }]\n'
          '[jobs.test]\nneeds = ["lint"]\nmatrix = { python = ["3.11", "3.12"] }\n'
          'steps = [{ name = "pytest", run = "pytest ${{ matrix.python }}" }]\n')


@pytest.fixture(autouse=True)
def no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORGECI_API_TOKEN", raising=False)


def test_pipelines_pipeline_cancel_and_retry(api_settings: Settings, make_repo: MakeRepo,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    repo, sha = make_repo({".forgeci.toml": DIAMOND})
    with live_server(api_settings) as server:
        url = ["--server", server.url]
        queue = server.runtime.queue
        assert main(["submit", "--repo", str(repo), "--ref", "main", *url]) == 0
        assert capsys.readouterr().out.startswith(f"pipeline 1 queued with 4 jobs (1, 2, 3, 4): {server.url}/"
                                                  f"dashboard/pipelines/1")
        assert main(["submit", "--repo", str(repo), "--ref", "main", *url]) == 0
        capsys.readouterr()
        finish(queue, 1)
        finish(queue, 2, JobState.failure, (("b", "failure"),))
        finish(queue, 3)

        assert main(["pipelines", *url]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].split() == ["ID", "STATE", "JOBS", "REPO", "REF", "SHA", "CREATED", "DURATION"]
        assert table[1].split()[:3] == ["2", "queued", "0/4"] and table[2].split()[:3] == ["1", "failure", "4/4"]
        assert sha[:12] in table[2] and str(repo) in table[2]
        assert main(["pipelines", "--status", "failure", "--json", *url]) == 0
        assert [p["id"] for p in json.loads(capsys.readouterr().out)] == [1]

        assert main(["pipeline", "1", *url]) == 0
        tree = capsys.readouterr().out.splitlines()
        assert tree[0].startswith("pipeline 1: failure (4 of 4 jobs done, ") and tree[0].endswith(" end to end)")
        assert [line.split()[-1] for line in tree if "depth" in line] == ["0", "1", "2"]
        [d] = [line for line in tree if " d " in line]
        assert "<- b, c" in d and "skipped" in d and "not run: b ended failure" in d
        assert main(["pipeline", "2", "--json", *url]) == 0
        detail = json.loads(capsys.readouterr().out)
        assert [(j["name"], j["depth"], j["wait_reason"]) for j in detail["jobs"]] == [
            ("a", 0, "next in line"), ("b", 1, "waits for a"), ("c", 1, "waits for a"), ("d", 2, "waits for b, c")]

        assert main(["cancel", "--pipeline", "2", *url]) == 0
        assert capsys.readouterr().out.strip() == "pipeline 2 cancelled"
        assert main(["cancel", "--pipeline", "2", *url]) == 1  # finished: the command failed
        assert "cannot cancel pipeline 2: it is cancelled" in capsys.readouterr().err
        assert main(["retry", "--pipeline", "1", "--failed", *url]) == 0
        assert capsys.readouterr().out.startswith(f"pipeline 1: 2 jobs queued again (2, 4): {server.url}/dashboard/"
                                                  f"pipelines/1")
        assert main(["retry", "--pipeline", "2", *url]) == 0
        out = capsys.readouterr().out
        assert out.startswith("pipeline 3 queued with 4 jobs (9, 10, 11, 12) (retry of pipeline 2): ")
        assert main(["retry", "--pipeline", "1", *url]) == 1  # running again: not finished
        assert "only a finished one can be retried" in capsys.readouterr().err

        assert main(["pipeline", "99", *url]) == 2
        assert "pipeline 99 not found" in capsys.readouterr().err
        for argv in (["cancel"], ["cancel", "1", "--pipeline", "2"], ["retry"], ["retry", "1", "--failed"],
                     ["retry", "--pipeline", "1", "--from-failed-step"]):
            assert main([*argv, *url]) == 2, argv
            assert "forgeci" in capsys.readouterr().err


def test_submit_follow_prints_every_job_prefixed_and_exits_with_the_pipeline(
        settings: Settings, make_repo: MakeRepo, capsys: pytest.CaptureFixture[str]) -> None:
    repo, _ = make_repo({".forgeci.toml": MATRIX})
    engine = FakeEngine()
    engine.on("lint", Script(lines=["all clean"]))
    engine.on("pytest 3.11", Script(lines=["3.11 passed"]))
    engine.on("pytest 3.12", Script(lines=["3.12 passed"]))
    with live_server(with_runner(settings), workers=True, engine=engine) as server:
        code = main(["submit", "--repo", str(repo), "--ref", "main", "--follow", "--server", server.url])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        out = captured.out.splitlines()
        assert {"[lint] all clean", "[test (python=3.11)] 3.11 passed", "[test (python=3.12)] 3.12 passed"} <= set(out)
        prefixes = ("[lint] ", "[test (python=3.11)] ", "[test (python=3.12)] ")
        assert all(line.startswith(prefixes) for line in out), out
        assert out.index("[lint] all clean") < out.index("[test (python=3.11)] 3.11 passed")  # its need first
        err = captured.err
        assert "pipeline 1 queued with 3 jobs (1, 2, 3): " in err
        assert "[lint] job 1: success" in err and "[test (python=3.12)] job 3: success" in err
        assert "pipeline 1: success (3 jobs, " in err

        engine.on("pytest 3.12", Script(exit_code=2, lines=["3.12 broke"]))
        code = main(["submit", "--repo", str(repo), "--ref", "main", "--follow", "--server", server.url])
        captured = capsys.readouterr()
    assert code == 1, captured.err
    assert "[test (python=3.12)] 3.12 broke" in captured.out.splitlines()
    assert "[test (python=3.12)] job 6: failure" in captured.err and "pipeline 2: failure (3 jobs, " in captured.err


def test_a_pipeline_its_filters_skip_follows_to_skipped_and_exits_0(
        settings: Settings, make_repo: MakeRepo, capsys: pytest.CaptureFixture[str]) -> None:
    repo, _ = make_repo({".forgeci.toml": 'events = ["push"]\n' + MATRIX})  # a submission is `manual`
    with live_server(with_runner(settings), workers=True, engine=FakeEngine()) as server:
        url = ["--server", server.url]
        code = main(["submit", "--repo", str(repo), "--ref", "main", "--follow", *url])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert "pipeline 1: skipped (3 jobs, " in captured.err
        assert main(["pipelines", "--status", "skipped", "--json", *url]) == 0
        assert [p["state"] for p in json.loads(capsys.readouterr().out)] == ["skipped"]
