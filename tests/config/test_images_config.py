"""`image = { containerfile = ..., context = ... }`: parsed at the top level, per job and per matrix member."""

from __future__ import annotations

import pytest

from config.errors import ConfigError
from config.images import ImageBuild
from config.pipeline import parse_pipeline, pipeline_from_dict, pipeline_to_toml
from config.plan import expand

STEPS = '[[steps]]\nrun = "true"\n'


def issues(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as exc:
        parse_pipeline(text, "p")
    return {issue.path: issue.message for issue in exc.value.issues}


def test_a_table_names_a_containerfile_and_a_context_that_defaults_to_the_root() -> None:
    p = parse_pipeline('image = { containerfile = "ci/Containerfile" }\n' + STEPS, "p")
    assert p.image == ImageBuild(containerfile="ci/Containerfile", context=".")
    assert parse_pipeline('image = "localhost/x:1"\n' + STEPS, "p").image == "localhost/x:1"


def test_jobs_and_matrix_members_get_their_own_build() -> None:
    p = parse_pipeline(
        'image = { containerfile = "ci/${{ matrix.os }}.Containerfile", context = "ci/${{ matrix.os }}" }\n'
        '[jobs.test]\nmatrix = { os = ["debian", "alpine"] }\n[[jobs.test.steps]]\nrun = "true"\n'
        '[jobs.lint]\nimage = { containerfile = "lint/Containerfile", context = "lint" }\n'
        '[[jobs.lint.steps]]\nrun = "true"\n'
        '[jobs.plain]\nimage = "localhost/plain:1"\n[[jobs.plain.steps]]\nrun = "true"\n', "p")
    images = {job.display: job.pipeline.image for job in expand(p)}
    assert images == {
        "test (os=debian)": ImageBuild(containerfile="ci/debian.Containerfile", context="ci/debian"),
        "test (os=alpine)": ImageBuild(containerfile="ci/alpine.Containerfile", context="ci/alpine"),
        "lint": ImageBuild(containerfile="lint/Containerfile", context="lint"),
        "plain": "localhost/plain:1"}
    assert parse_pipeline(pipeline_to_toml(p), "again") == p


def test_bad_tables_are_reported_with_their_paths() -> None:
    assert issues('image = { containerfile = "/etc/Containerfile", contxt = "." }\n' + STEPS) == {
        "image.contxt": "unknown key (did you mean 'context'?)",
        "image.containerfile": "expected a path inside the repository (relative, without '..'), "
                               "got '/etc/Containerfile'"}
    assert issues('image = { context = "../up" }\n' + STEPS) == {
        "image.context": "expected a path inside the repository (relative, without '..'), got '../up'",
        "image.containerfile": "missing required key (path)"}
    assert issues('image = 3\n' + STEPS) == {"image": "expected a non-empty string, got 3"}
    assert issues('[jobs.a]\nimage = { containerfile = "C", context = "${{ matrix.x }}" }\n'
                  '[[jobs.a.steps]]\nrun = "true"\n') == {
        "jobs.a.image.context": '${{ matrix.x }}: job "a" has no matrix'}


def test_a_submitted_pipeline_may_build_too() -> None:
    p = pipeline_from_dict({"image": {"containerfile": "Containerfile"}, "steps": [{"run": "true"}]}, "api")
    assert p.image == ImageBuild(containerfile="Containerfile")
