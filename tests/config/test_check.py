"""`forgeci config check`: choosing the file kind and reporting every issue."""

from __future__ import annotations

from pathlib import Path

import pytest

import forgeci_cli
from config.check import check_file, detect_kind

PIPELINE = '[[steps]]\nname = "test"\nrun = "make test"\n'
SETTINGS = '[server]\nport = 9000\n'


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "text", "kind"),
    [
        (".forgeci.toml", SETTINGS, "pipeline"),
        ("ci.forgeci.toml", "", "pipeline"),
        ("forgeci.toml", SETTINGS, "settings"),
        ("forgeci.toml", PIPELINE, "pipeline"),
        ("other.toml", PIPELINE, "pipeline"),
        ("other.toml", '[jobs.a]\nsteps = [{ run = "x" }]\n', "pipeline"),
        ("other.toml", "not [ toml", "settings"),
        ("other.toml", b"steps = 1\n\xff", "settings"),
    ],
)
def test_detect_kind(tmp_path: Path, name: str, text: str | bytes, kind: str) -> None:
    data = text if isinstance(text, bytes) else text.encode()
    assert detect_kind(tmp_path / name, data) == kind


def test_valid_files_have_no_issues(tmp_path: Path) -> None:
    assert check_file(write(tmp_path / "forgeci.toml", SETTINGS)) == []
    assert check_file(write(tmp_path / ".forgeci.toml", PIPELINE)) == []


def test_settings_issues(tmp_path: Path) -> None:
    path = write(tmp_path / "forgeci.toml", "[server]\nport = 70000\n[queue]\ndefault_priority = -1\n")
    assert [(i.source, i.path) for i in check_file(path)] == [
        (str(path), "server.port"), (str(path), "queue.default_priority")]


def test_pipeline_issues(tmp_path: Path) -> None:
    path = write(tmp_path / ".forgeci.toml", '[server]\nport = 1\n')
    assert [i.path for i in check_file(path)] == ["server", "steps"]
    steps_in_settings_name = write(tmp_path / "forgeci.toml", '[[steps]]\nrun = "x"\ntimeout = "1 day"\n')
    assert [i.path for i in check_file(steps_in_settings_name)] == ["steps[0].timeout"]


def test_missing_file_is_one_issue(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    (issue,) = check_file(path)
    assert (issue.source, issue.path, issue.message) == (str(path), "", "no such file")


def test_unparsable_file(tmp_path: Path) -> None:
    (issue,) = check_file(write(tmp_path / "forgeci.toml", "[server\n"))
    assert issue.message.startswith("invalid TOML: line 1, column")


JOBS = """
[jobs.lint]
steps = [{ run = "ruff check ." }]

[jobs.test]
needs = ["lint", "build"]
matrix = { python = ["3.11", "3.12"] }
steps = [{ run = "pytest ${{ matrix.pyhton }}" }]

[jobs.build]
needs = ["tset"]
steps = [{ run = "python -m build" }]

[jobs.deploy]
needs = ["deploy-check"]
steps = [{ run = "./deploy" }]

[jobs.deploy-check]
needs = ["deploy"]
steps = [{ run = "./check" }]
"""


def test_config_check_names_a_cycle_and_an_unknown_need(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / ".forgeci.toml", JOBS)
    assert forgeci_cli.main(["config", "check", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f'{path}: jobs.build.needs[0]: unknown job "tset" (jobs: lint, test, build, deploy, deploy-check)',
        f"{path}: jobs: cycle deploy -> deploy-check -> deploy",
        f"2 errors in {path}",
    ]


def test_config_check_reports_matrix_problems_once_the_graph_is_sound(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    text = JOBS.replace('"tset"', '"lint"').replace('needs = ["deploy"]\n', "")
    path = write(tmp_path / "ci.forgeci.toml", text)
    assert forgeci_cli.main(["config", "check", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f'{path}: jobs.test.steps[0].run: unknown matrix key "pyhton" (matrix keys: python)', f"1 error in {path}"]
    write(path, text.replace("pyhton", "python"))
    assert forgeci_cli.main(["config", "check", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok\n"
