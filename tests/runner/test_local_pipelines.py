"""`forgeci run` of a pipeline of many jobs on the fake engine: dependency order, parallelism, selection
(--job, --with-needs, --step), line prefixes, the summary and the exit codes."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import forgeci_cli
import runner.runtime
from config.errors import ConfigError
from config.settings import Settings
from runner.local import LocalRun, run_local
from runner.local_select import SelectionError
from runner.models import JobState, PipelineState
from tests.fake_engine import FakeEngine, Script
from tests.runner.test_pipelines import DIAMOND, with_queue

MakeRepo = Callable[..., tuple[Path, str]]

TWO_STEPS = '''
[jobs.a]
steps = [{ name = "a", run = "step-a" }]
[jobs.b]
needs = ["a"]
steps = [{ name = "b1", run = "step-b1" }, { name = "b2", run = "step-b2" }]
'''

MATRIX = '''
[jobs.lint]
steps = [{ name = "ruff", run = "ruff" }]
[jobs.test]
needs = ["lint"]
matrix = { python = ["3.11", "3.12"] }
steps = [{ name = "pytest", run = "pytest ${{ matrix.python }}" }]
'''


async def run(settings: Settings, engine: FakeEngine, repo: Path, **kwargs: Any) -> tuple[LocalRun, str]:
    out = io.StringIO()
    result = await run_local(settings, repo, environ={}, out=out, engine=engine, **kwargs)
    return result, out.getvalue()


def execs(engine: FakeEngine, run: str) -> list[Any]:
    return [e for e in engine.execs if e.run == run]


def overlap(engine: FakeEngine, one: str, other: str) -> bool:
    a, b = execs(engine, one)[0], execs(engine, other)[0]
    return a.started < (b.ended or 0) and b.started < (a.ended or 0)


def states(result: LocalRun) -> dict[str, JobState]:
    return {job.display: job.state for job in result.jobs}


async def test_a_diamond_runs_its_middle_jobs_at_the_same_time_and_its_last_after_both(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": DIAMOND})
    fake_engine.on("step-b", Script(delay=0.3))
    fake_engine.on("step-c", Script(delay=0.3))
    result, _ = await run(with_queue(fake_settings, max_concurrent=4), fake_engine, repo)
    assert result.state is PipelineState.success and result.succeeded
    assert states(result) == {n: JobState.success for n in "abcd"}
    assert overlap(fake_engine, "step-b", "step-c")
    [a], [d] = execs(fake_engine, "step-a"), execs(fake_engine, "step-d")
    assert all(e.started >= (a.ended or 0) for e in fake_engine.execs if e is not a)
    assert all(d.started >= (e.ended or 0) for e in execs(fake_engine, "step-b") + execs(fake_engine, "step-c"))
    assert len({e.container_id for e in fake_engine.execs}) == 4  # a container of its own for each job
    assert len({str(spec.workspace) for spec in fake_engine.created}) == 4  # and a workspace copy of its own
    fake_engine.check()


async def test_each_job_runs_on_its_own_copy_of_the_working_tree_as_it_is(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": DIAMOND, "src.txt": "committed"})
    (repo / "src.txt").write_text("edited")  # uncommitted: a local run sees it
    seen: dict[str, str] = {}
    fake_engine.on("step-b", Script(files={"from-b": "b"}))
    real_exec = fake_engine.exec

    async def exec_and_look(container_id: str, argv: Any, env: Any, on_output: Any, workdir: str = "/workspace") -> int:
        workspace = fake_engine.containers[container_id].spec.workspace
        code = await real_exec(container_id, argv, env, on_output, workdir)
        seen[argv[-1]] = (workspace / "src.txt").read_text() + ("+b" if (workspace / "from-b").exists() else "")
        return code

    fake_engine.exec = exec_and_look  # type: ignore[method-assign]
    result, _ = await run(fake_settings, fake_engine, repo)
    assert result.succeeded
    assert seen == {"step-a": "edited", "step-b": "edited+b", "step-c": "edited", "step-d": "edited"}
    assert not (repo / "from-b").exists()


async def test_parallel_1_runs_one_job_at_a_time(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": DIAMOND})
    fake_engine.on("step-b", Script(delay=0.2))
    fake_engine.on("step-c", Script(delay=0.2))
    result, _ = await run(with_queue(fake_settings, max_concurrent=4), fake_engine, repo, parallel=1)
    assert result.succeeded
    ordered = sorted(fake_engine.execs, key=lambda e: e.started)
    assert all((one.ended or 0) <= other.started for one, other in zip(ordered, ordered[1:]))
    assert [e.run for e in ordered][0] == "step-a" and [e.run for e in ordered][-1] == "step-d"


async def test_a_failing_middle_job_skips_the_last_and_fails_the_run(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": DIAMOND})
    fake_engine.on("step-b", Script(lines=["boom"], exit_code=3))
    result, text = await run(fake_settings, fake_engine, repo)
    assert result.state is PipelineState.failure and not result.succeeded
    assert states(result) == {"a": JobState.success, "b": JobState.failure, "c": JobState.success,
                              "d": JobState.skipped}
    assert "step-d" not in fake_engine.runs()
    summary = text[text.rindex("job / step"):]
    assert "b           failure" in summary and "step b failed (exit 3)" in summary
    assert "d           skipped            -  not run: b ended failure" in summary
    assert "4 jobs; b failure" in summary


async def test_every_line_is_prefixed_with_its_jobs_display_name(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": MATRIX})
    fake_engine.on("pytest 3.12", Script(lines=["collected on $MATRIX_PYTHON"], stderr=["warned"]))
    result, text = await run(fake_settings, fake_engine, repo)
    assert result.succeeded
    assert "[test (python=3.12)] [pytest] collected on 3.12\n" in text
    assert "[test (python=3.12)] [pytest] warned\n" in text
    assert "[lint] == step 1/1: ruff\n" in text
    log = text[:text.rindex("job / step")].strip().splitlines()
    assert all(line.startswith(("[lint] ", "[test (python=3.11)] ", "[test (python=3.12)] ")) for line in log)
    assert "\033[" not in text  # no colours when the output is not a terminal


async def test_the_summary_lists_every_job_with_its_state_duration_and_steps(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": TWO_STEPS})
    fake_engine.on("step-b2", Script(exit_code=4))
    result, text = await run(fake_settings, fake_engine, repo)
    assert not result.succeeded
    assert [(j.display, j.state, [s.name for s in j.steps]) for j in result.jobs] == [
        ("a", JobState.success, ["a"]), ("b", JobState.failure, ["b1", "b2"])]
    assert all(j.duration is not None for j in result.jobs)
    lines = text[text.rindex("job / step"):].splitlines()
    assert lines[0].split() == ["job", "/", "step", "result", "time", "exit", "/", "why"]
    assert lines[1].split()[:2] == ["a", "success"] and lines[2].split()[:2] == ["a", "success"]
    assert lines[2].startswith("  a ") and lines[2].split()[-1] == "0"
    assert lines[3].split()[:2] == ["b", "failure"] and lines[3].endswith("step b2 failed (exit 4)")
    assert lines[4].startswith("  b1 ") and lines[5].startswith("  b2 ") and lines[5].split()[-1] == "4"
    assert lines[-1].startswith("FAILURE in ") and lines[-1].endswith(": 2 jobs; b failure")


async def test_a_job_name_selects_all_its_members_and_runs_them_without_their_needs(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": MATRIX})
    result, _ = await run(fake_settings, fake_engine, repo, jobs=["test"])
    assert result.succeeded
    assert sorted(fake_engine.runs()) == ["pytest 3.11", "pytest 3.12"]  # lint's need counted as satisfied
    assert [j.display for j in result.jobs] == ["test (python=3.11)", "test (python=3.12)"]


async def test_a_display_name_selects_one_member(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": MATRIX})
    result, text = await run(fake_settings, fake_engine, repo, jobs=["test (python=3.12)"])
    assert result.succeeded and fake_engine.runs() == ["pytest 3.12"]
    assert "[test (python=3.12)] " in text


async def test_with_needs_adds_what_the_selected_jobs_need_transitively(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": DIAMOND})
    result, _ = await run(fake_settings, fake_engine, repo, jobs=["b"], with_needs=True)
    assert [j.display for j in result.jobs] == ["a", "b"] and result.succeeded
    assert fake_engine.runs() == ["step-a", "step-b"]  # b waited for a
    fake_engine.execs.clear()
    result, _ = await run(fake_settings, fake_engine, repo, jobs=["d"], with_needs=True)
    assert [j.display for j in result.jobs] == ["a", "b", "c", "d"]
    assert fake_engine.runs()[0] == "step-a" and fake_engine.runs()[-1] == "step-d"


async def test_without_with_needs_a_selected_jobs_needs_count_as_satisfied(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": DIAMOND})
    result, _ = await run(fake_settings, fake_engine, repo, jobs=["d", "b"])
    assert [j.display for j in result.jobs] == ["b", "d"]  # plan order, whatever the order on the command line
    assert fake_engine.runs() == ["step-b", "step-d"]  # d still waits for b, which is selected; not for c or a
    assert execs(fake_engine, "step-d")[0].started >= (execs(fake_engine, "step-b")[0].ended or 0)


async def test_an_unknown_job_is_a_usage_error_listing_the_jobs(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": MATRIX})
    with pytest.raises(SelectionError) as raised:
        await run(fake_settings, fake_engine, repo, jobs=["tset"])
    message = str(raised.value)
    assert "--job 'tset'" in message
    assert "lint, test (2 members: test (python=3.11); test (python=3.12))" in message
    assert not fake_engine.started  # nothing started before the usage error


async def test_step_runs_one_step_of_the_one_selected_job(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": TWO_STEPS})
    result, _ = await run(fake_settings, fake_engine, repo, jobs=["b"], step="b2")
    assert result.succeeded and fake_engine.runs() == ["step-b2"]
    fake_engine.execs.clear()
    result, _ = await run(fake_settings, fake_engine, repo, jobs=["b"], with_needs=True, step="b2")
    assert result.succeeded and fake_engine.runs() == ["step-a", "step-b2"]  # the needs run whole


@pytest.mark.parametrize("jobs", [[], ["test"]])
async def test_step_with_more_than_one_selected_job_is_a_usage_error(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo, jobs: list[str]) -> None:
    repo, _ = make_local_repo({".forgeci.toml": MATRIX})
    with pytest.raises(SelectionError, match="--step 'pytest' runs one step of one job") as raised:
        await run(fake_settings, fake_engine, repo, jobs=jobs, step="pytest")
    assert "pick one with --job" in str(raised.value)
    assert not fake_engine.started


async def test_a_pipeline_of_top_level_steps_prints_and_selects_as_before(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": '[[steps]]\nname = "a"\nrun = "one"\n'
                                                '[[steps]]\nname = "b"\nrun = "two"\n'})
    fake_engine.on("two", Script(lines=["B"], exit_code=5))
    result, text = await run(fake_settings, fake_engine, repo)
    assert result.one_job and not result.succeeded and [j.display for j in result.jobs] == ["ci"]
    assert "\n[b] B\n" in text and "[ci]" not in text  # no job prefix: one job, as forgeci run always printed
    assert "step  result" in text and "\nFAILURE in " in text and ": step b failed (exit 5)" in text
    fake_engine.execs.clear()
    result, text = await run(fake_settings, fake_engine, repo, step="a")
    assert result.succeeded and fake_engine.runs() == ["one"] and "\nSUCCESS in " in text
    result, _ = await run(fake_settings, fake_engine, repo, jobs=["ci"])
    assert result.jobs[0].state is JobState.failure


async def test_an_invalid_file_fails_the_run_with_its_messages_unless_jobs_are_named(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": '[jobs.a]\nneeds = ["nope"]\nsteps = [{ run = "x" }]\n'})
    result, text = await run(fake_settings, fake_engine, repo)
    assert result.one_job and result.jobs[0].state is JobState.failure and not result.succeeded
    assert "invalid pipeline:" in text and "nope" in text
    with pytest.raises(ConfigError, match="nope") as raised:  # the file's own errors, as a usage error
        await run(fake_settings, fake_engine, repo, jobs=["a"])
    assert not isinstance(raised.value, SelectionError)


async def test_outputs_and_fail_fast_behave_as_on_a_server(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    toml = ('[jobs.build]\nsteps = [{ run = "build" }]\n'
            '[jobs.test]\nneeds = ["build"]\nmatrix = { n = [1, 2] }\nsteps = [{ run = "test ${{ matrix.n }}" }]\n')
    repo, _ = make_local_repo({".forgeci.toml": toml})
    fake_engine.on("build", Script(output={"version": "1.2.3"}))
    fake_engine.on("test 1", Script(delay=0.2, exit_code=1))
    fake_engine.on("test 2", Script(hang=True))
    result, text = await run(with_queue(fake_settings, max_concurrent=4), fake_engine, repo)
    assert states(result) == {"build": JobState.success, "test (n=1)": JobState.failure,
                              "test (n=2)": JobState.cancelled}
    assert execs(fake_engine, "test 2")[0].env["NEEDS_BUILD_VERSION"] == "1.2.3"
    assert execs(fake_engine, "test 2")[0].signals == ["TERM"]
    assert "3 jobs; test (n=1) failure, test (n=2) cancelled" in text
    fake_engine.check()


def settings_file(settings: Settings, path: Path) -> Path:
    path.write_text(f'data_dir = "{settings.data_dir}"\n[queue]\nmax_concurrent = 4\n'
                    f'[runner]\nimage = "{settings.runner.image}"\nnetwork = "none"\nca_bundle = ""\n')
    return path


@pytest.fixture
def cli(fake_settings: Settings, fake_engine: FakeEngine, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Callable[..., int]:
    """forgeci_cli.main(["run", ...]) on the fake engine (the one seam: the engine the runtime would start)."""
    monkeypatch.setattr(runner.runtime, "default_engine", lambda settings, layout: fake_engine)
    config = settings_file(fake_settings, tmp_path / "forgeci.toml")
    return lambda *args: forgeci_cli.main(["run", "--config", str(config), *args])


def test_the_cli_exits_0_when_the_pipeline_succeeds_and_1_when_it_fails(
        cli: Callable[..., int], fake_engine: FakeEngine, make_local_repo: MakeRepo,
        capsys: pytest.CaptureFixture[str]) -> None:
    repo, _ = make_local_repo({".forgeci.toml": DIAMOND})
    assert cli(str(repo)) == 0
    assert "SUCCESS in " in capsys.readouterr().out
    fake_engine.on("step-c", Script(exit_code=1))
    assert cli(str(repo), "--parallel", "1") == 1
    out = capsys.readouterr().out
    assert "[c] == step c failed" in out and "FAILURE in " in out
    assert cli(str(repo), "--job", "a") == 0  # c is not selected


@pytest.mark.parametrize(("args", "says"), [
    (["--job", "e"], "--job 'e': the pipeline has no such job or matrix member; its jobs: a, b, c, d"),
    (["--step", "a"], "--step 'a' runs one step of one job, and 4 jobs are selected (a; b; c; d)"),
    (["--job", "d", "--step", "d", "--job", "a"], "2 jobs are selected (d; a)"),
])
def test_the_cli_exits_2_on_a_usage_error(cli: Callable[..., int], fake_engine: FakeEngine,
                                          make_local_repo: MakeRepo, capsys: pytest.CaptureFixture[str],
                                          args: list[str], says: str) -> None:
    repo, _ = make_local_repo({".forgeci.toml": DIAMOND})
    assert cli(str(repo), *args) == 2
    assert says in capsys.readouterr().err
    assert not fake_engine.execs


def test_parallel_must_be_a_positive_number(cli: Callable[..., int], make_local_repo: MakeRepo,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    repo, _ = make_local_repo({".forgeci.toml": DIAMOND})
    with pytest.raises(SystemExit) as exited:
        cli(str(repo), "--parallel", "0")
    assert exited.value.code == 2 and "expected at least 1" in capsys.readouterr().err



async def test_a_run_whose_every_job_its_branches_skip_is_not_a_success(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": 'branches = ["release/*"]\n' + DIAMOND})
    result, _ = await run(fake_settings, fake_engine, repo, jobs=["a"])
    assert result.state is PipelineState.success and states(result) == {"a": JobState.skipped}
    assert not result.succeeded and not fake_engine.execs  # nothing ran: exit 1, as a skipped one-job run did


async def test_a_failure_with_continue_on_error_still_succeeds(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": DIAMOND.replace('[jobs.b]\n', '[jobs.b]\ncontinue_on_error = true\n')})
    fake_engine.on("step-b", Script(exit_code=1))
    result, _ = await run(fake_settings, fake_engine, repo)
    assert result.succeeded and states(result)["b"] is JobState.failure and states(result)["d"] is JobState.success


async def test_interrupting_a_run_stops_its_jobs_and_removes_their_containers(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": DIAMOND})
    fake_engine.on("step-b", Script(hang=True))
    fake_engine.on("step-c", Script(hang=True))
    task = asyncio.create_task(run(with_queue(fake_settings, max_concurrent=4), fake_engine, repo))
    while len(fake_engine.execs) < 3:
        await asyncio.sleep(0.02)
    task.cancel()  # what asyncio.run does to the CLI's run on Ctrl-C
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [e.signals for e in fake_engine.execs if e.run in ("step-b", "step-c")] == [["TERM"], ["TERM"]]
    assert "step-d" not in fake_engine.runs()
    fake_engine.check()  # no container left
    assert [p.name for p in fake_settings.data_dir.iterdir()] == []  # the scratch data dir is gone


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_on_a_terminal_each_jobs_prefix_has_a_colour_of_its_own(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    repo, _ = make_local_repo({".forgeci.toml": DIAMOND})
    out = Tty()
    await run_local(fake_settings, repo, environ={}, out=out, engine=fake_engine)
    prefixes = {line.split("]", 1)[0] + "]" for line in out.getvalue().splitlines() if line.startswith("\033[")}
    colours = {p.split("m", 1)[0] for p in prefixes if "[a]" in p or "[b]" in p or "[c]" in p or "[d]" in p}
    assert len(colours) == 4  # four jobs, four colours
    monkeypatch.setenv("NO_COLOR", "1")
    out = Tty()
    await run_local(fake_settings, repo, environ={}, out=out, engine=fake_engine)
    assert "\033[" not in out.getvalue()


async def test_a_servers_postgresql_queue_is_not_used_by_forgeci_run(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    import dataclasses

    repo, _ = make_local_repo({".forgeci.toml": TWO_STEPS})
    # A settings file shared with `forgeci serve` on PostgreSQL: the run stays on a private SQLite queue (this
    # database does not exist: any connection to it would fail the run).
    on_postgres = dataclasses.replace(fake_settings, queue=dataclasses.replace(
        fake_settings.queue, url="postgresql://ci@/forgeci?host=/nonexistent-socket-dir"))
    result, _ = await run(on_postgres, fake_engine, repo)
    assert result.state is PipelineState.success and states(result) == {"a": JobState.success, "b": JobState.success}
