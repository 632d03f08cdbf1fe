"""`forgeci config check`: choosing the file kind and reporting every issue."""

from __future__ import annotations

from pathlib import Path

import pytest

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
