"""`forgeci init`: toolchain detection and the starter pipeline it writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.errors import ConfigError
from config.pipeline import load_pipeline, parse_pipeline, pipeline_from_dict
from config.starter import detect_project, starter_pipeline, write_starter


def project(root: Path, *files: str) -> Path:
    for name in files:
        (root / name).write_text("")
    return root


@pytest.mark.parametrize(
    ("files", "kinds", "install", "test"),
    [
        (["package-lock.json"], ["node"], "npm ci", "npm test"),
        (["yarn.lock"], ["node"], "yarn install --frozen-lockfile", "yarn test"),
        (["pnpm-lock.yaml"], ["node"], "pnpm install --frozen-lockfile", "pnpm test"),
        (["requirements.txt"], ["python"],
         "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt", ".venv/bin/python -m pytest"),
        (["requirements.txt", "requirements-dev.txt"], ["python"],
         "python3 -m venv .venv && .venv/bin/pip install -r requirements-dev.txt -r requirements.txt",
         ".venv/bin/python -m pytest"),
        (["poetry.lock"], ["python"],
         "python3 -m venv .venv && . .venv/bin/activate && pip install poetry && poetry install --no-interaction",
         ".venv/bin/python -m pytest"),
        (["uv.lock", "requirements.txt"], ["python"],
         "python3 -m venv .venv && .venv/bin/pip install uv && .venv/bin/uv sync --frozen --inexact",
         ".venv/bin/python -m pytest"),
        (["go.sum", "go.mod"], ["go"], "go build ./...", "go test ./..."),
        (["Cargo.lock"], ["rust"], "cargo build --locked", "cargo test --locked"),
    ],
)
def test_single_toolchain(tmp_path: Path, files: list[str], kinds: list[str], install: str, test: str) -> None:
    project(tmp_path, *files)
    assert detect_project(tmp_path) == kinds
    assert starter_pipeline(tmp_path) == {"steps": [{"name": "install", "run": install},
                                                    {"name": "test", "run": test}]}


def test_several_toolchains_get_unique_prefixed_steps(tmp_path: Path) -> None:
    project(tmp_path, "Cargo.lock", "package-lock.json", "go.sum")
    assert detect_project(tmp_path) == ["node", "go", "rust"]
    names = [s["name"] for s in starter_pipeline(tmp_path)["steps"]]
    assert names == ["node-install", "node-test", "go-install", "go-test", "rust-install", "rust-test"]


def test_lockfile_names_must_be_files(tmp_path: Path) -> None:
    (tmp_path / "go.sum").mkdir()
    (tmp_path / "requirements.txt.d").mkdir()
    assert detect_project(tmp_path) == []


def test_nothing_detected_still_gives_a_valid_pipeline(tmp_path: Path) -> None:
    data = starter_pipeline(tmp_path)
    assert len(data["steps"]) == 1 and data["steps"][0]["run"].startswith("echo ")
    pipeline_from_dict(data, "starter")  # raises if invalid
    path = write_starter(tmp_path)
    assert load_pipeline(path).steps[0].name == "hello"


def test_write_starter_writes_a_valid_readable_file(tmp_path: Path) -> None:
    project(tmp_path, "package-lock.json")
    path = write_starter(tmp_path)
    assert path == tmp_path / ".forgeci.toml"
    text = path.read_text()
    assert text.startswith("# forgeci pipeline, written by `forgeci init` (detected: node).")
    assert text.count("[[steps]]") == 2
    assert [(s.name, s.run) for s in parse_pipeline(text, str(path)).steps] == [
        ("install", "npm ci"), ("test", "npm test")]


def test_write_starter_keeps_an_existing_file_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / ".forgeci.toml"
    path.write_text("# mine\n")
    with pytest.raises(ConfigError) as exc:
        write_starter(tmp_path)
    (issue,) = exc.value.issues
    assert (issue.source, issue.message) == (str(path), "already exists; use --force to overwrite it")
    assert path.read_text() == "# mine\n"
    project(tmp_path, "Cargo.lock")
    write_starter(tmp_path, force=True)
    assert "cargo test --locked" in path.read_text()
