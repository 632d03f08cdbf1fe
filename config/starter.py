"""`forgeci init`: detect a project's toolchains from its lockfiles and write a starter .forgeci.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from config.errors import ConfigError, ConfigIssue
from config.pipeline import pipeline_from_dict, pipeline_to_toml

PIPELINE_FILE = ".forgeci.toml"
PROJECT_KINDS = ("node", "python", "go", "rust")  # the order detect_project reports and steps run in

_NODE = (  # first match wins: a repository with two lockfiles usually migrated to the later tool
    ("pnpm-lock.yaml", "pnpm install --frozen-lockfile", "pnpm test"),
    ("yarn.lock", "yarn install --frozen-lockfile", "yarn test"),
    ("package-lock.json", "npm ci", "npm test"),
)
_PYTEST = ".venv/bin/python -m pytest"
_HEADER = (
    "# forgeci pipeline, written by `forgeci init`{detected}.\n"
    "# Edit the steps to taste; see the configuration reference in forgeci's README.\n"
    "# Without a [cache] table, caches are chosen from the lockfiles.\n\n"
)


def detect_project(root: Path) -> list[str]:
    """The toolchains `root` uses, from its lockfiles, in PROJECT_KINDS order (e.g. ["node", "python"])."""
    return [kind for kind in PROJECT_KINDS if _commands(root, kind)]


def _commands(root: Path, kind: str) -> tuple[str, str] | None:
    """(install, test) commands for toolchain `kind` in `root`, or None when it is not used there."""
    if kind == "node":
        return next(((install, test) for lock, install, test in _NODE if (root / lock).is_file()), None)
    if kind == "python":
        return _python_commands(root)
    if kind == "go":
        return ("go build ./...", "go test ./...") if (root / "go.sum").is_file() else None
    if kind == "rust":
        return ("cargo build --locked", "cargo test --locked") if (root / "Cargo.lock").is_file() else None
    raise ValueError(f"unknown project kind {kind!r}")


def _python_commands(root: Path) -> tuple[str, str] | None:
    venv = "python3 -m venv .venv"
    if (root / "uv.lock").is_file():
        # --inexact keeps uv itself, which lives in the same venv.
        return f"{venv} && .venv/bin/pip install uv && .venv/bin/uv sync --frozen --inexact", _PYTEST
    if (root / "poetry.lock").is_file():
        # Poetry installs into the active venv, so the project stays in .venv where the cache expects it.
        return f"{venv} && . .venv/bin/activate && pip install poetry && poetry install --no-interaction", _PYTEST
    requirements = sorted(p.name for p in root.glob("requirements*.txt") if p.is_file())
    if requirements:
        flags = " ".join(f"-r {name}" for name in requirements)
        return f"{venv} && .venv/bin/pip install {flags}", _PYTEST
    return None


def starter_pipeline(root: Path) -> dict[str, Any]:
    """The starter pipeline for `root` as a dict (the shape pipeline_from_dict takes)."""
    kinds = detect_project(root)
    steps = []
    for kind in kinds:
        install, test = _commands(root, kind) or ("", "")
        # Plain names for the common one-toolchain case; prefixed ones keep names unique otherwise.
        prefix = f"{kind}-" if len(kinds) > 1 else ""
        steps += [{"name": f"{prefix}install", "run": install}, {"name": f"{prefix}test", "run": test}]
    if not steps:
        steps = [{"name": "hello", "run": "echo 'forgeci works: add your build and test steps to .forgeci.toml'"}]
    return {"steps": steps}


def write_starter(root: Path, force: bool = False) -> Path:
    """Write `root/.forgeci.toml` and return its path; an existing file is kept unless `force`."""
    path = root / PIPELINE_FILE
    if path.exists() and not force:
        raise ConfigError(ConfigIssue(str(path), "", "already exists; use --force to overwrite it"))
    kinds = detect_project(root)
    pipeline = pipeline_from_dict(starter_pipeline(root), str(path))  # the same validation users get
    detected = f" (detected: {', '.join(kinds)})" if kinds else ""
    path.write_text(_HEADER.format(detected=detected) + pipeline_to_toml(pipeline), encoding="utf-8")
    return path
