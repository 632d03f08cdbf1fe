"""The README's configuration reference documents every settings field and pipeline key, as the schema says."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import pipeline, settings
from config.schema import FieldDoc

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN, END = "<!-- BEGIN config reference -->", "<!-- END config reference -->"


def reference_section(readme: str) -> str:
    start, stop = readme.find(BEGIN), readme.find(END)
    assert 0 <= start < stop, "README.md lacks the config reference markers"
    return readme[start + len(BEGIN):stop]


def all_fields() -> list[FieldDoc]:
    return settings.settings_reference() + pipeline.pipeline_reference()


def missing_rows(section: str) -> list[str]:
    """Field paths with neither a `| \\`path\\` |` table row nor (for a table) a `[path]` heading."""
    lines = section.splitlines()
    return [d.path for d in all_fields()
            if not any(line.startswith(f"| `{d.path}` |") or line in (f"#### `[{d.path}]`", f"#### `[[{d.path}]]`")
                       for line in lines)]


def stale_lines(section: str) -> list[str]:
    """Lines of the rendered tables (types, defaults, meanings) that the section does not contain verbatim."""
    rendered = settings.reference_markdown() + "\n" + pipeline.reference_markdown()
    lines = set(section.splitlines())
    return [line for line in rendered.splitlines() if line and line not in lines]


@pytest.fixture(scope="module")
def section() -> str:
    return reference_section(README.read_text(encoding="utf-8"))


def test_every_field_has_a_row(section: str) -> None:
    assert missing_rows(section) == []


def test_rows_match_the_schema(section: str) -> None:
    assert stale_lines(section) == []


def test_the_reference_covers_design_keys() -> None:
    paths = {d.path for d in all_fields()}
    assert {"data_dir", "server.port", "queue.max_concurrent", "runner.ulimits", "storage.url",
            "retention.job_days", "secrets.<NAME>.env", "secrets.<NAME>.repos", "git.token_env",
            "github.app_id", "gitea.api_url", "gitlab.token_env", "runner.shutdown_grace", "storage.connect_timeout",
            "storage.read_timeout"} <= paths
    assert {"image", "timeout", "branches", "snapshot", "secrets", "env", "cache.paths", "cache.key_files",
            "cache.save", "steps[].name", "steps[].run", "steps[].timeout", "steps[].continue_on_error",
            "steps[].env"} <= paths
    assert all(d.doc for d in all_fields()), "every field needs a one-line meaning"


def test_checks_catch_a_missing_or_stale_row(section: str) -> None:
    without_port = "\n".join(line for line in section.splitlines() if not line.startswith("| `server.port` |"))
    assert missing_rows(without_port) == ["server.port"]
    assert missing_rows(section.replace("#### `[gitlab]`", "#### GitLab")) == ["gitlab"]
    stale = section.replace("| `steps[].run` | string | required |", "| `steps[].run` | string | optional |")
    assert len(stale_lines(stale)) == 1
    with pytest.raises(AssertionError):
        reference_section("no markers here")
