"""The CLI's foundation commands: help, planned subcommands, init, config check, exit codes."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from config.pipeline import load_pipeline
from forgeci_cli import PLANNED, build_parser, planned

DESIGN_COMMANDS = ["serve", "run", "submit", "jobs", "status", "logs", "cancel", "retry", "debug", "tui", "init",
                   "image", "maintenance", "config"]


def forgeci(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "forgeci_cli", *args], capture_output=True, text=True, cwd=cwd,
                          check=False)


def test_help_lists_every_subcommand_of_the_design() -> None:
    result = forgeci("--help")
    assert result.returncode == 0
    for name in DESIGN_COMMANDS:
        assert f"    {name} " in result.stdout or f"    {name}\n" in result.stdout, name


def test_a_subcommand_not_built_yet_names_its_issue_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(PLANNED, "someday", "issue 99 (the future)")
    assert planned("someday")(argparse.Namespace()) == 2
    assert "forgeci someday: not built yet; issue 99 (the future) brings it" in capsys.readouterr().err
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in PLANNED:  # whatever is still planned is wired to say so
        if name in choices:
            assert choices[name].get_default("func").__qualname__.startswith("planned"), name


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
    assert any("npm ci" in step.run for step in pipeline.steps)
    again = forgeci("init", str(tmp_path))
    assert again.returncode == 2 and "--force" in again.stderr
    assert forgeci("init", "--force", str(tmp_path)).returncode == 0


def test_a_missing_settings_file_named_by_flag_is_a_usage_error(tmp_path: Path) -> None:
    result = forgeci("--config", str(tmp_path / "nope.toml"), "config", "check")
    assert result.returncode == 2
    assert "nope.toml" in result.stderr
