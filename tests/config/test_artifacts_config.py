"""The artifact keys of both files: `artifacts` and `artifacts_from` in a pipeline, `runner.max_artifact_size` and
`retention.artifact_days` in the settings, and their rows in the README's reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.artifacts import ArtifactSpec, effective_from, expire_text, parse_expire, parse_size, size_text
from config.errors import ConfigError
from config.pipeline import parse_pipeline, pipeline_from_dict, pipeline_to_dict, pipeline_to_toml
from config.plan import expand
from config.settings import Settings, parse_settings
from tests.config.test_readme_reference import README, missing_rows, reference_section, stale_lines

ISSUE_EXAMPLE = '''
[jobs.build]
artifacts = { paths = ["dist/*.whl", "coverage.xml", "reports/**"], when = "success", expire = "7d" }
steps = [{ run = "python -m build" }]
[jobs.publish]
needs = ["build"]
artifacts_from = ["build"]
steps = [{ run = "twine upload dist/*" }]
'''


def issues_of(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse_pipeline(text, "f")
    return {issue.path: issue.message for issue in caught.value.issues}


def test_the_issue_example_parses_and_each_member_pipeline_carries_its_keys() -> None:
    pipeline = parse_pipeline(ISSUE_EXAMPLE, "f")
    build = pipeline.jobs["build"].artifacts
    assert build == ArtifactSpec(paths=("dist/*.whl", "coverage.xml", "reports/**"), when="success", expire=7 * 86400)
    planned = {job.name: job.pipeline for job in expand(pipeline)}
    assert planned["build"].artifacts == build and planned["build"].artifacts_from is None
    assert planned["publish"].artifacts is None and planned["publish"].artifacts_from == ("build",)
    # What the planner stores for each job reads back the same (the executor reads it that way).
    again = pipeline_from_dict(pipeline_to_dict(planned["build"]), "stored")
    assert again.artifacts == build
    assert parse_pipeline(pipeline_to_toml(pipeline), "f") == pipeline


def test_top_level_keys_are_every_jobs_defaults_and_a_job_overrides_them() -> None:
    pipeline = parse_pipeline('''
artifacts = { paths = ["reports/**"], when = "always" }
artifacts_from = []
[jobs.a]
steps = [{ run = "a" }]
[jobs.b]
needs = ["a"]
artifacts = { paths = ["dist"] }
artifacts_from = ["a"]
steps = [{ run = "b" }]
''', "f")
    planned = {job.name: job.pipeline for job in expand(pipeline)}
    assert planned["a"].artifacts == ArtifactSpec(paths=("reports/**",), when="always")
    assert planned["a"].artifacts_from == ()
    assert planned["b"].artifacts == ArtifactSpec(paths=("dist",)) and planned["b"].artifacts_from == ("a",)


def test_a_one_job_pipeline_keeps_artifacts_too() -> None:
    pipeline = parse_pipeline('artifacts = { paths = ["dist/*"] }\n[[steps]]\nrun = "make"\n', "f")
    [job] = expand(pipeline)
    assert job.pipeline.artifacts == ArtifactSpec(paths=("dist/*",))


@pytest.mark.parametrize(("line", "path", "message"), [
    ('artifacts = { paths = ["/etc/passwd"] }', "jobs.a.artifacts.paths",
     "item 0: expected a glob inside the workspace (relative, without '..'), got '/etc/passwd'"),
    ('artifacts = { paths = ["dist/../../x"] }', "jobs.a.artifacts.paths",
     "item 0: expected a glob inside the workspace (relative, without '..'), got 'dist/../../x'"),
    ('artifacts = { paths = [] }', "jobs.a.artifacts.paths", "expected a non-empty array of strings, got an empty array"),
    ('artifacts = { paths = ["x"], when = "sometimes" }', "jobs.a.artifacts.when",
     "expected one of 'success', 'failure', 'always', got 'sometimes'"),
    ('artifacts = { paths = ["x"], expire = "7 weeks" }', "jobs.a.artifacts.expire",
     "expected a duration like 7d, 12h or 1d12h, got '7 weeks'"),
    ('artifacts = { paths = ["x"], expire = "9999d" }', "jobs.a.artifacts.expire",
     "expected a duration like 7d, 12h or 1d12h between 1s and 3650d, got '9999d'"),
    ('artifacts = { path = ["x"] }', "jobs.a.artifacts.path", "unknown key (did you mean 'paths'?)"),
])
def test_bad_artifact_keys_name_their_key(line: str, path: str, message: str) -> None:
    assert issues_of(f'[jobs.a]\n{line}\nsteps = [{{ run = "x" }}]\n')[path] == message


def test_artifacts_from_names_the_jobs_needs() -> None:
    found = issues_of('''
artifacts_from = ["nope"]
[jobs.lint]
steps = [{ run = "x" }]
[jobs.build]
steps = [{ run = "x" }]
[jobs.publish]
needs = ["build"]
artifacts_from = ["build", "lint"]
steps = [{ run = "x" }]
''')
    assert found == {"artifacts_from[0]": 'unknown job "nope" (jobs: lint, build, publish)',
                     "jobs.publish.artifacts_from[1]": '"lint" is not one of the job\'s needs (needs: build)'}


def test_effective_from_defaults_to_every_need() -> None:
    assert effective_from(None, ("a", "b")) == ("a", "b")
    assert effective_from(("b", "x"), ("a", "b")) == ("b",)
    assert effective_from((), ("a", "b")) == ()


def test_expire_and_size_texts_read_back() -> None:
    assert [parse_expire(t) for t in ("7d", "12h", "1d12h", "90m", 3600, "1d 30m")] == [
        604800, 43200, 129600, 5400, 3600, 88200]
    assert [expire_text(s) for s in (604800, 43200, 129600, 5400)] == ["7d", "12h", "1d12h", "1h30m"]
    assert [parse_size(t) for t in ("1g", "500m", "64k", "1GiB", "2 MB", 1024)] == [
        1 << 30, 500 << 20, 64 << 10, 1 << 30, 2 << 20, 1024]
    assert [size_text(s) for s in (1 << 30, 1536 << 20, 1000)] == ["1g", "1536m", "1000"]
    for bad in ("lots", "0", -1, "1.5g", True):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_the_settings_keys_and_their_defaults() -> None:
    assert Settings.default().runner.max_artifact_size == 1 << 30
    assert Settings.default().retention.artifact_days == 7
    settings = parse_settings('[runner]\nmax_artifact_size = "200m"\n[retention]\nartifact_days = 30\n', "s")
    assert (settings.runner.max_artifact_size, settings.retention.artifact_days) == (200 << 20, 30)
    with pytest.raises(ConfigError) as caught:
        parse_settings('[runner]\nmax_artifact_size = "big"\n[retention]\nartifact_days = 0\n', "s")
    assert [i.path for i in caught.value.issues] == ["runner.max_artifact_size", "retention.artifact_days"]


def test_the_readme_reference_documents_every_artifact_key() -> None:
    section = reference_section(Path(README).read_text(encoding="utf-8"))
    keys = ["runner.max_artifact_size", "retention.artifact_days", "artifacts", "artifacts.paths", "artifacts.when",
            "artifacts.expire", "artifacts_from", "jobs.<NAME>.artifacts", "jobs.<NAME>.artifacts_from"]
    assert all(f"| `{key}` |" in section for key in keys)
    assert missing_rows(section) == [] and stale_lines(section) == []
