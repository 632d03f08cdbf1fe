"""Pipeline spec: the model, validation messages, branch filter, and writing it back."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from config.errors import ConfigError
from config.pipeline import (
    CacheSpec,
    Pipeline,
    Step,
    load_pipeline,
    parse_pipeline,
    pipeline_from_dict,
    pipeline_to_dict,
    pipeline_to_toml,
)

DESIGN_EXAMPLE = '''
image = "localhost/forgeci-job:latest"       # optional
timeout = "30m"                               # whole job
branches = ["main", "release/*"]              # optional: other refs end `skipped`
snapshot = "always"                           # always | on_success | on_failure | never
secrets = ["NPM_TOKEN"]                       # names from the server's [secrets]; never given to fork PRs

[env]
CI = "true"

[cache]                                       # optional: lockfiles are detected when absent
paths = ["node_modules"]
key_files = ["package-lock.json"]
save = "success"                              # or "always"

[[steps]]
name = "install"
run = "npm ci"

[[steps]]
name = "test"
run = "npm test"
timeout = "10m"
continue_on_error = false
env = { NODE_ENV = "test" }
'''

MINIMAL = '[[steps]]\nrun = "make"\n'


def issue_map(exc: pytest.ExceptionInfo[ConfigError]) -> dict[str, str]:
    return {issue.path: issue.message for issue in exc.value.issues}


def parse_errors(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as exc:
        parse_pipeline(text, ".forgeci.toml")
    assert {i.source for i in exc.value.issues} == {".forgeci.toml"}
    return issue_map(exc)


def test_design_example() -> None:
    p = parse_pipeline(DESIGN_EXAMPLE, ".forgeci.toml")
    assert p == Pipeline(
        image="localhost/forgeci-job:latest",
        timeout=1800.0,
        branches=("main", "release/*"),
        snapshot="always",
        secrets=("NPM_TOKEN",),
        env={"CI": "true"},
        cache=CacheSpec(paths=("node_modules",), key_files=("package-lock.json",), save="success"),
        steps=(
            Step(name="install", run="npm ci"),
            Step(name="test", run="npm test", timeout=600.0, continue_on_error=False, env={"NODE_ENV": "test"}),
        ),
    )


def test_defaults_of_a_minimal_pipeline() -> None:
    p = parse_pipeline(MINIMAL + '[[steps]]\nrun = "make test"\ntimeout = 90\n', "f")
    assert (p.image, p.timeout, p.branches, p.snapshot, p.secrets, p.env, p.cache) == (
        None, None, (), "always", (), {}, None)
    assert p.steps == (Step(name="step-1", run="make"), Step(name="step-2", run="make test", timeout=90.0))
    assert p.steps[0].timeout is None and p.steps[0].continue_on_error is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.image = "x"  # type: ignore[misc]


def test_three_mistakes_give_exactly_three_issues() -> None:
    issues = parse_errors(
        'snapshot = "sometimes"\n'
        '[cache]\npaths = ["node_modules"]\nsave = "never"\n'
        '[[steps]]\nrun = "a"\n[[steps]]\nrun = "b"\n[[steps]]\nrun = "c"\ntimeout = "soon"\n'
    )
    assert issues == {
        "snapshot": "expected one of 'always', 'on_success', 'on_failure', 'never', got 'sometimes'",
        "cache.save": "expected one of 'success', 'always', got 'never'",
        "steps[2].timeout": "expected a duration like 90s, 5m or 1h30m, got 'soon'",
    }


def test_unknown_keys_suggest_the_closest_key() -> None:
    issues = parse_errors('[[steps]]\nrnu = "make"\n[[steps]]\nrun = "x"\ncolour = "red"\n')
    # A misspelt required key is one mistake: no extra "missing run" issue.
    assert issues == {
        "steps[0].rnu": "unknown key (did you mean 'run'?)",
        "steps[1].colour": "unknown key (expected one of name, run, timeout, continue_on_error, env)",
    }


def test_unknown_top_level_key() -> None:
    assert parse_errors('brances = ["main"]\n' + MINIMAL) == {"brances": "unknown key (did you mean 'branches'?)"}


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ("", "steps", "missing required key: expected at least one [[steps]] table, or [jobs.NAME] tables"),
        ("steps = []", "steps", "expected at least one [[steps]] table, or [jobs.NAME] tables, got an empty array"),
        ('steps = "make"', "steps", "expected at least one [[steps]] table, or [jobs.NAME] tables, got 'make'"),
        ("steps = [1]", "steps[0]", "expected a table, got 1"),
        ('[[steps]]\nname = "x"\n', "steps[0].run", "missing required key (string)"),
        ('[[steps]]\nrun = ""\n', "steps[0].run", "expected a non-empty string, got ''"),
        ('[[steps]]\nname = ""\nrun = "x"\n', "steps[0].name", "expected a non-empty string, got ''"),
        (MINIMAL + "continue_on_error = 1\n", "steps[0].continue_on_error", "expected true or false, got 1"),
        (MINIMAL + 'timeout = "0s"\n', "steps[0].timeout",
         "expected a duration like 90s, 5m or 1h30m, got '0s' (a duration must be positive)"),
        (MINIMAL + "timeout = 1.5\n", "steps[0].timeout", "expected a duration like 90s, 5m or 1h30m, got 1.5"),
        (MINIMAL + "env = { A = 1 }\n", "steps[0].env.A", "expected a string, got 1"),
        ('timeout = true\n' + MINIMAL, "timeout", "expected a duration like 90s, 5m or 1h30m, got true"),
        ('image = ""\n' + MINIMAL, "image", "expected a non-empty string, got ''"),
        ('branches = "main"\n' + MINIMAL, "branches", "expected an array of strings, got 'main'"),
        ('branches = ["main", ""]\n' + MINIMAL, "branches", "item 1: expected a non-empty string, got ''"),
        ('secrets = ["npm-token"]\n' + MINIMAL, "secrets",
         "item 0: expected a secret name like NPM_TOKEN, got 'npm-token'"),
        ('env = { "NODE ENV" = "x" }\n' + MINIMAL, "env", "expected variable names like NODE_ENV, got 'NODE ENV'"),
        ('env = { CI = true }\n' + MINIMAL, "env.CI", "expected a string, got true"),
        ('[cache]\nkey_files = ["a"]\n' + MINIMAL, "cache.paths", "missing required key (array of paths)"),
        ('[cache]\npaths = []\n' + MINIMAL, "cache.paths", "expected a non-empty array of strings, got an empty array"),
        ('[cache]\npaths = ["/etc"]\n' + MINIMAL, "cache.paths",
         "item 0: expected a path inside the workspace (relative, without '..'), got '/etc'"),
        ('[cache]\npaths = ["a/../../x"]\n' + MINIMAL, "cache.paths",
         "item 0: expected a path inside the workspace (relative, without '..'), got 'a/../../x'"),
        ('cache = ["a"]\n' + MINIMAL, "cache[0]", "expected a table, got 'a'"),
        ('cache = 1\n' + MINIMAL, "cache", "expected a [cache] table or [[cache]] tables, got 1"),
        ('cache = []\n' + MINIMAL, "cache", "expected a [cache] table or [[cache]] tables, got an empty array"),
    ],
)
def test_each_mistake_names_its_key_and_what_was_expected(text: str, path: str, message: str) -> None:
    assert parse_errors(text) == {path: message}


def test_duplicate_step_names() -> None:
    issues = parse_errors('[[steps]]\nname = "test"\nrun = "a"\n[[steps]]\nrun = "b"\n[[steps]]\nname = "test"\nrun = "c"\n'
                          '[[steps]]\nname = "step-2"\nrun = "d"\n')
    assert issues == {
        "steps[2].name": "duplicate step name 'test' (also steps[0])",
        "steps[3].name": "duplicate step name 'step-2' (also steps[1])",
    }


def test_quoted_keys_in_paths() -> None:
    assert parse_errors(MINIMAL + '"odd key" = 1\n') == {'steps[0]."odd key"': "unknown key (expected one of "
                                                         "name, run, timeout, continue_on_error, env)"}


def test_syntax_error_names_line_and_column() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_pipeline('[[steps]]\nrun = "unterminated\n', ".forgeci.toml")
    (issue,) = exc.value.issues
    assert issue.message.startswith("invalid TOML: line 2, column")


def test_json_submission_uses_the_same_validation() -> None:
    body = json.loads('{"steps": [{"name": "t", "run": "pytest", "timeout": "5m"}], "env": {"CI": "1"}}')
    p = pipeline_from_dict(body, "POST /jobs/submit")
    assert p.steps == (Step(name="t", run="pytest", timeout=300.0),) and p.env == {"CI": "1"}
    with pytest.raises(ConfigError) as exc:
        pipeline_from_dict({"steps": [{"run": "x", "timeout": "later"}]}, "POST /jobs/submit")
    assert [(i.source, i.path) for i in exc.value.issues] == [("POST /jobs/submit", "steps[0].timeout")]
    with pytest.raises(ConfigError) as exc:
        pipeline_from_dict({"steps": [{"run": "x", "timeout": None}], "image": None}, "api")
    assert issue_map(exc) == {"image": "expected a non-empty string, got null",
                              "steps[0].timeout": "expected a duration like 90s, 5m or 1h30m, got null"}
    with pytest.raises(ConfigError) as exc:
        pipeline_from_dict(["not", "a", "table"], "api")
    assert issue_map(exc) == {"(top level)": "expected a table, got an array"}
    with pytest.raises(ConfigError) as exc:
        pipeline_from_dict({1: "x", "steps": [{"run": "x"}]}, "api")
    assert issue_map(exc) == {"(top level)": "expected string keys, got 1"}


def test_load_pipeline(tmp_path: Path) -> None:
    path = tmp_path / ".forgeci.toml"
    path.write_text(DESIGN_EXAMPLE)
    assert load_pipeline(path) == parse_pipeline(DESIGN_EXAMPLE, "x")
    path.write_text('[[steps]]\nrun = 5\n')
    with pytest.raises(ConfigError) as exc:
        load_pipeline(path)
    assert [(i.source, i.path) for i in exc.value.issues] == [(str(path), "steps[0].run")]
    with pytest.raises(ConfigError, match="cannot read the pipeline"):
        load_pipeline(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("branches", "ref", "expected"),
    [
        ((), "refs/heads/anything", True),
        ((), "refs/tags/v1", True),
        (("main",), "refs/heads/main", True),
        (("main",), "main", True),
        (("main",), "refs/heads/mainline", False),
        (("main",), "refs/heads/feature/main", False),
        (("release/*",), "refs/heads/release/1.2", True),
        (("release/*",), "refs/heads/release/1/hotfix", True),
        (("release/*",), "refs/heads/releases", False),
        (("main",), "refs/tags/main", False),
        (("*",), "refs/tags/v1", False),
        (("*",), "refs/pull/7/head", False),
        (("main", "refs/tags/v*"), "refs/tags/v1.0", True),
        (("main", "refs/tags/v*"), "refs/tags/nightly", False),
        (("refs/heads/main",), "refs/heads/main", True),
        (("refs/heads/main",), "main", True),
        (("Main",), "refs/heads/main", False),
    ],
)
def test_branches_filter(branches: tuple[str, ...], ref: str, expected: bool) -> None:
    p = pipeline_from_dict({"branches": list(branches), "steps": [{"run": "x"}]}, "f")
    assert p.applies_to(ref) is expected


def test_to_dict_and_toml_round_trip() -> None:
    p = parse_pipeline(DESIGN_EXAMPLE, "x")
    as_dict = pipeline_to_dict(p)
    assert as_dict["timeout"] == "30m" and as_dict["steps"][1]["timeout"] == "10m"
    assert "continue_on_error" not in as_dict["steps"][1]  # defaults are left out
    assert parse_pipeline(tomli_w.dumps(as_dict), "x") == p
    assert pipeline_from_dict(json.loads(json.dumps(as_dict)), "x") == p
    text = pipeline_to_toml(p)
    assert "[[steps]]" in text and "[steps.env]" in text
    assert parse_pipeline(text, "x") == p
    assert pipeline_to_dict(parse_pipeline(MINIMAL, "x")) == {"steps": [{"name": "step-1", "run": "make"}]}


_names = st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True)
_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20)
_rel = st.from_regex(r"[a-z][a-z0-9_.-]{0,8}(/[a-z0-9_-]{1,5}){0,2}", fullmatch=True)
_durations = st.none() | st.integers(1, 10**6).map(float)
_steps = st.lists(
    st.builds(Step, name=_text, run=_text, timeout=_durations, continue_on_error=st.booleans(),
              env=st.dictionaries(_names, _text, max_size=3)),
    min_size=1, max_size=4, unique_by=lambda s: s.name,
).map(tuple)
_pipelines = st.builds(
    Pipeline,
    image=st.none() | _text,
    timeout=_durations,
    branches=st.lists(_text, max_size=3).map(tuple),
    snapshot=st.sampled_from(["always", "on_success", "on_failure", "never"]),
    secrets=st.lists(_names, max_size=3).map(tuple),
    env=st.dictionaries(_names, _text, max_size=3),
    cache=st.none() | st.builds(CacheSpec, paths=st.lists(_rel, min_size=1, max_size=3).map(tuple),
                                key_files=st.lists(_rel, max_size=2).map(tuple),
                                save=st.sampled_from(["success", "always"])),
    steps=_steps,
)


@settings(max_examples=150, deadline=None)
@given(_pipelines)
def test_any_valid_pipeline_round_trips(p: Pipeline) -> None:
    assert parse_pipeline(pipeline_to_toml(p), "x") == p
    assert pipeline_from_dict(pipeline_to_dict(p), "x") == p
