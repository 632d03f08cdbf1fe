"""Event names and the `events`, `paths` and `paths_ignore` filters: globs, reasons, and the file's checks."""

from __future__ import annotations

import pytest

from config.errors import ConfigError
from config.pipeline import parse_pipeline, pipeline_from_dict, pipeline_to_dict
from config.triggers import event_name, path_matches, ruled_out

GLOBS = [
    ("src/**", "src/app.py", True), ("src/**", "src/a/b/c.py", True), ("src/**", "docs/src/x", False),
    ("*.md", "README.md", True), ("*.md", "docs/guide/x.md", True), ("/*.md", "docs/x.md", False),
    ("/*.md", "x.md", True), ("docs/", "docs/a/b.txt", True), ("src/*.py", "src/a/b.py", False),
    ("src/*.py", "src/b.py", True), ("**/test_*.py", "test_a.py", True), ("**/test_*.py", "t/u/test_a.py", True),
    ("src/**/x.c", "src/x.c", True), ("[a-c].txt", "b.txt", True), ("[!a-c].txt", "b.txt", False),
    ("file?.txt", "file1.txt", True), ("file?.txt", "file/.txt", False), ("a+b(c).txt", "a+b(c).txt", True),
]


@pytest.mark.parametrize(("pattern", "path", "matches"), GLOBS)
def test_globs_match_like_gitignore_with_double_stars(pattern: str, path: str, matches: bool) -> None:
    assert path_matches(pattern, path) is matches


def test_older_event_names_read_as_manual() -> None:
    assert [event_name(e) for e in ("api", "local", "manual", "push", "schedule")] == [
        "manual", "manual", "manual", "push", "schedule"]


def test_reasons_name_the_filter() -> None:
    assert ruled_out(None, ["src/**"], None, "push", ["docs/a.md"]) == "skipped: no change under src/**"
    assert ruled_out(None, ["src/**"], None, "push", ["docs/a.md", "src/x.py"]) is None
    assert ruled_out(None, None, ["docs/**", "*.md"], "push", ["docs/a", "README.md"]) == (
        "skipped: every change is under paths_ignore (docs/**, *.md)")
    assert ruled_out(None, None, ["docs/**"], "pull_request", ["docs/a", "src/b"]) is None
    assert ruled_out(["push"], None, None, "api", None) == "skipped: the pipeline runs on push events, not manual"
    assert ruled_out(["push", "manual"], None, None, "local", None) is None


def test_path_filters_do_not_apply_without_a_diff() -> None:
    """A schedule, a manual run or a tag has no changed files; nor has a push whose changes are unknown."""
    for event in ("schedule", "manual", "tag"):
        assert ruled_out(None, ["src/**"], None, event, ["docs/a"]) is None
    assert ruled_out(None, ["src/**"], ["**"], "push", None) is None


def test_the_file_takes_filters_at_the_top_and_per_job() -> None:
    pipeline = parse_pipeline('''
events = ["push", "manual"]
paths = ["src/**", "pyproject.toml"]
paths_ignore = ["docs/**"]
[jobs.test]
paths = ["tests/**"]
events = ["push"]
steps = [{ run = "pytest" }]
''', ".forgeci.toml")
    assert pipeline.events == ("push", "manual") and pipeline.paths == ("src/**", "pyproject.toml")
    assert pipeline.jobs["test"].paths == ("tests/**",) and pipeline.jobs["test"].paths_ignore is None
    assert pipeline_from_dict(pipeline_to_dict(pipeline), "again") == pipeline


def test_bad_filters_are_reported_with_their_key_path() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_pipeline('events = ["push", "cron"]\npaths = ["../x", ""]\n[jobs.a]\npaths_ignore = "docs"\n'
                       'steps = [{ run = "x" }]\n', ".forgeci.toml")
    text = str(caught.value)
    assert "events: item 1: expected one of push, pull_request, tag, schedule, manual, got 'cron'" in text
    assert "paths: item 0" in text and "jobs.a.paths_ignore: expected an array of strings" in text
