"""`forgeci config check`: validate a forgeci.toml or .forgeci.toml and list every issue."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from config.errors import ConfigError, ConfigIssue
from config.pipeline import parse_pipeline
from config.schema import load_toml
from config.settings import parse_settings

FileKind = Literal["pipeline", "settings"]


def detect_kind(path: Path, data: bytes) -> FileKind:
    """`.forgeci.toml`, `*.forgeci.toml` or a file with top-level `steps` or `jobs` is a pipeline; else settings."""
    if path.name.endswith(".forgeci.toml"):
        return "pipeline"
    try:
        # Only a peek: a file that does not parse is reported by the settings parser, with line and column.
        top = load_toml(data, str(path))
        has_steps = "steps" in top or "jobs" in top
    except ConfigError:
        has_steps = False
    return "pipeline" if has_steps else "settings"


def check_file(path: Path) -> list[ConfigIssue]:
    """Every issue in the settings or pipeline file at `path`; [] when it is valid."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [ConfigIssue(str(path), "", "no such file")]
    except OSError as exc:
        return [ConfigIssue(str(path), "", f"cannot read: {exc.strerror or exc}")]
    parse = parse_pipeline if detect_kind(path, data) == "pipeline" else parse_settings
    try:
        parse(data, str(path))
    except ConfigError as exc:
        return exc.issues
    return []
