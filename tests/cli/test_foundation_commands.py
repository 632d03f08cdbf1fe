"""The CLI's foundation commands: help, --config on either side of the subcommand, init, config check, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from config.pipeline import load_pipeline
from forgeci_cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DESIGN_COMMANDS = ["serve", "run", "submit", "jobs", "status", "logs", "cancel", "retry", "debug", "tui", "init",
                   "image", "maintenance", "config"]


def forgeci(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FORGECI_CONFIG"}
    if cwd is not None:  # `-m forgeci_cli` from another directory: the worktree's code must still be found
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-m", "forgeci_cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, check=False)


def test_help_lists_every_subcommand_of_the_design() -> None:
    result = forgeci("--help")
    assert result.returncode == 0
    for name in DESIGN_COMMANDS:
        assert f"    {name} " in result.stdout or f"    {name}\n" in result.stdout, name


def test_config_check_prints_every_mistake_with_its_key_path_and_exits_2(tmp_path: Path) -> None:
    pipeline = tmp_path / ".forgeci.toml"
    pipeline.write_text('timeout = "soon"\nsnapshot = "sometimes"\n[[steps]]\nname = "build"\nrnu = "make"\n')
    result = forgeci("config", "check", str(pipeline))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith(str(pipeline))]
    assert len(lines) == 3  # the typo of `run` is one mistake, not also a missing `run`
    text = result.stderr
    assert "timeout" in text and "soon" in text
    assert "snapshot" in text and "sometimes" in text
    assert "steps[0].rnu" in text and "did you mean 'run'" in text
    assert "3 errors" in text


def test_config_check_of_a_valid_file_exits_0(tmp_path: Path) -> None:
    settings = tmp_path / "forgeci.toml"
    settings.write_text('[server]\nport = 9000\n[queue]\nmax_concurrent = 4\n')
    result = forgeci("config", "check", str(settings))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_config_check_of_bad_settings_exits_2(tmp_path: Path) -> None:
    settings = tmp_path / "forgeci.toml"
    settings.write_text('[server]\nport = 0\n[queu]\nmax_concurrent = 4\n')
    result = forgeci("config", "check", str(settings))
    assert result.returncode == 2
    assert "server.port" in result.stderr and "queu" in result.stderr


def test_init_writes_a_valid_starter_and_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "package-lock.json").write_text("{}")
    result = forgeci("init", str(tmp_path))
    assert result.returncode == 0, result.stderr
    pipeline = load_pipeline(tmp_path / ".forgeci.toml")
    assert any("npm ci" in step.run for step in pipeline.jobs["test"].steps)
    assert forgeci("config", "check", str(tmp_path / ".forgeci.toml")).returncode == 0
    again = forgeci("init", str(tmp_path))
    assert again.returncode == 2 and "--force" in again.stderr
    assert forgeci("init", "--force", str(tmp_path)).returncode == 0


def test_a_missing_settings_file_named_by_flag_is_a_usage_error(tmp_path: Path) -> None:
    result = forgeci("--config", str(tmp_path / "nope.toml"), "config", "check")
    assert result.returncode == 2
    assert "nope.toml" in result.stderr


@pytest.mark.parametrize("argv", [["--config", "F", "serve"], ["serve", "--config", "F"],
                                  ["--config", "F", "config", "check"], ["config", "check", "--config", "F"],
                                  ["config", "--config", "F", "check"], ["jobs", "--config", "F"]])
def test_config_is_accepted_before_or_after_the_subcommand(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).config == "F"


def test_a_config_after_the_subcommand_wins_and_none_keeps_the_one_before() -> None:
    parser = build_parser()
    assert parser.parse_args(["--config", "before", "serve", "--config", "after"]).config == "after"
    assert parser.parse_args(["--config", "before", "serve"]).config == "before"
    assert parser.parse_args(["serve"]).config is None


@pytest.mark.parametrize("where", ["before", "after"])
def test_config_check_and_serve_read_the_settings_file_named_on_either_side(where: str, tmp_path: Path) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text("[server]\nport = 9000\n")
    bad.write_text("[server]\nport = 0\n")

    def run(command: list[str], config: Path) -> subprocess.CompletedProcess[str]:
        flag = ["--config", str(config)]
        return forgeci(*(flag + command if where == "before" else command + flag), cwd=tmp_path)

    checked = run(["config", "check"], good)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == f"{good}: ok"
    refused = run(["serve"], bad)  # an invalid file stops serve before it starts anything
    assert refused.returncode == 2
    assert "server.port" in refused.stderr and "unrecognized arguments" not in refused.stderr

def test_the_demo_pipeline_at_the_repository_root_is_valid() -> None:
    from config.pipeline import load_pipeline

    pipeline = load_pipeline(Path(__file__).resolve().parents[2] / ".forgeci.toml")
    assert [step.name for step in pipeline.steps] == ["compile", "pipeline", "summary"]
    assert pipeline.timeout is not None and pipeline.timeout <= 300  # CI runs it: it must stay quick
