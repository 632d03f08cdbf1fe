"""Pipelines of many jobs: the [jobs.NAME] model, and every mistake with its key path and message."""

from __future__ import annotations

import json

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from config.errors import ConfigError
from config.pipeline import (
    CacheSpec,
    JobSpec,
    Pipeline,
    Step,
    parse_pipeline,
    pipeline_from_dict,
    pipeline_to_dict,
    pipeline_to_toml,
)

ISSUE_EXAMPLE = '''
timeout = "30m"                # top-level keys (image, timeout, env, branches, snapshot, secrets, cache) are
[env]                          # defaults for every job; a job's own key overrides them
LEVEL = "full"

[jobs.lint]
steps = [{ name = "ruff", run = "ruff check ." }]

[jobs.test]
needs = ["lint"]
matrix = { python = ["3.11", "3.12"], db = ["sqlite", "postgres"] }
matrix_exclude = [{ python = "3.11", db = "postgres" }]
matrix_include = [{ python = "3.13", db = "sqlite" }]
fail_fast = true               # default true: a failed member cancels its queued/running siblings
max_parallel = 2               # at most this many members of this matrix at once
continue_on_error = false      # true: this job's failure does not fail the pipeline, and dependants run
[[jobs.test.steps]]
name = "pytest"
run = "pytest --db ${{ matrix.db }}"

[jobs.build]
needs = ["test"]
if = "success"                 # success (default) | failure | always
steps = [{ run = "python -m build" }]
'''

STEPS = 'steps = [{ run = "x" }]\n'
BAD_NAME = 'expected job names of letters, digits, "-" and "_", starting with a letter or "_", at most 100 long, got {}'


def errors(text: str) -> dict[str, str]:
    """Every issue of pipeline `text`, by key path (each path at most once)."""
    with pytest.raises(ConfigError) as exc:
        parse_pipeline(text, ".forgeci.toml")
    paths = [i.path for i in exc.value.issues]
    assert len(paths) == len(set(paths)), paths
    return {i.path: i.message for i in exc.value.issues}


def job(name: str, body: str = "") -> str:
    return f"[jobs.{name}]\n{body}{STEPS}"


def test_the_issue_example() -> None:
    p = parse_pipeline(ISSUE_EXAMPLE, ".forgeci.toml")
    assert p.steps == () and list(p.jobs) == ["lint", "test", "build"]
    assert p.timeout == 1800.0 and p.env == {"LEVEL": "full"}
    assert p.jobs["lint"] == JobSpec(steps=(Step(name="ruff", run="ruff check ."),))
    assert p.jobs["test"] == JobSpec(
        needs=("lint",), matrix={"python": ("3.11", "3.12"), "db": ("sqlite", "postgres")},
        matrix_exclude=({"python": "3.11", "db": "postgres"},), matrix_include=({"python": "3.13", "db": "sqlite"},),
        fail_fast=True, max_parallel=2, continue_on_error=False,
        steps=(Step(name="pytest", run="pytest --db ${{ matrix.db }}"),))
    build = p.jobs["build"]
    assert (build.needs, build.if_) == (("test",), "success")
    assert build.steps == (Step(name="step-1", run="python -m build"),)
    # Overrides left out are None: "take the top-level key".
    assert (build.image, build.timeout, build.branches, build.snapshot, build.secrets, build.cache, build.env) == (
        None, None, None, None, None, None, {})


def test_job_overrides_are_read() -> None:
    p = parse_pipeline(job("a", 'image = "img"\ntimeout = "10m"\nbranches = []\nsnapshot = "never"\n'
                                'secrets = ["NPM_TOKEN"]\nenv = { A = "1" }\ncache = { paths = ["node_modules"] }\n'
                                'if = "always"\nfail_fast = false\nmax_parallel = 1\ncontinue_on_error = true\n'),
                       "f")
    a = p.jobs["a"]
    assert (a.image, a.timeout, a.branches, a.snapshot, a.secrets, a.env, a.cache) == (
        "img", 600.0, (), "never", ("NPM_TOKEN",), {"A": "1"}, CacheSpec(paths=("node_modules",)))
    assert (a.if_, a.fail_fast, a.max_parallel, a.continue_on_error) == ("always", False, 1, True)


def test_the_one_job_form_may_be_named() -> None:
    assert parse_pipeline('name = "check"\n[[steps]]\nrun = "x"\n', "f").name == "check"
    assert parse_pipeline('[[steps]]\nrun = "x"\n', "f").name is None
    assert parse_pipeline('name = "all"\n' + job("a"), "f").name == "all"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[steps]]\nrun = "x"\n' + job("a"),
         {"steps": "top-level [[steps]] cannot be used with [jobs]: move them into a [jobs.NAME] table"}),
        ('timeout = "5m"\n', {"steps": "missing required key: expected at least one [[steps]] table, "
                                       "or [jobs.NAME] tables"}),
        ("[jobs]\n", {"jobs": "expected at least one [jobs.NAME] table, got an empty table"}),
        ("jobs = 1\n", {"jobs": "expected [jobs.NAME] tables, got 1"}),
        ("jobs = [1]\n", {"jobs": "expected [jobs.NAME] tables, got an array"}),
        # A misspelt `jobs` or `steps` is one mistake: no "missing steps" besides.
        (job("a").replace("[jobs.", "[job."), {"job": "unknown key (did you mean 'jobs'?)"}),
        ('[[step]]\nrun = "x"\n', {"step": "unknown key (did you mean 'steps'?)"}),
        ('name = "my ci"\n[[steps]]\nrun = "x"\n',
         {"name": "expected a name of letters, digits, \"-\" and \"_\", starting with a letter or \"_\", at most "
                  "100 long, got 'my ci'"}),
    ],
    ids=["steps-and-jobs", "neither", "empty-jobs", "jobs-not-a-table", "jobs-array", "misspelt-jobs",
         "misspelt-steps", "bad-name"],
)
def test_the_form_of_the_file(text: str, expected: dict[str, str]) -> None:
    assert errors(text) == expected


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        (job("1st"), "jobs", BAD_NAME.format("'1st'")),
        ('[jobs."a b"]\n' + STEPS, "jobs", BAD_NAME.format("'a b'")),
        (job("a" * 101), "jobs", BAD_NAME.format(f"'{'a' * 40}...'")),
        (job("build-x") + job("build_x"), "jobs.build_x",
         '"build-x" and "build_x" are the same name in variables (NEEDS_BUILD_X_...)'),
        (job("Test") + job("test"), "jobs.test", '"Test" and "test" are the same name in variables (NEEDS_TEST_...)'),
        ("[jobs.a]\n", "jobs.a.steps", "missing required key (array of tables, keys as `steps[]`)"),
        ("[jobs.a]\nsteps = []\n", "jobs.a.steps", "expected at least one [[jobs.a.steps]] table, got an empty array"),
        ("[jobs]\na = 1\n", "jobs.a", "expected a table, got 1"),
        (job("a", 'runs_in = "linux"\n'), "jobs.a.runs_in", "unknown key (did you mean 'runs_on'?)"),
        (job("a", 'runs-on = ["linux"]\n'), "jobs.a.runs-on", "unknown key (did you mean 'runs_on'?)"),
        (job("a", 'runs_on = "linux"\n'), "jobs.a.runs_on", "expected an array of strings, got 'linux'"),
        (job("a", 'runs_on = ["a b"]\n'), "jobs.a.runs_on", "item 0: expected a runner label (letters, digits, '.', "
                                                           "'_' and '-', starting with a letter or digit, at most 64), "
                                                           "got 'a b'"),
        (job("a", 'fancy = 1\n'), "jobs.a.fancy", (
            "unknown key (expected one of needs, if, matrix, matrix_exclude, matrix_include, fail_fast, max_parallel, "
            "continue_on_error, image, timeout, runs_on, branches, events, paths, paths_ignore, snapshot, secrets, env, "
            "cache, services, artifacts, artifacts_from, steps)")),
        (job("a", 'iff = "always"\n'), "jobs.a.iff", "unknown key (did you mean 'if'?)"),
        (job("a", 'if = "sometimes"\n'), "jobs.a.if",
         "expected one of 'success', 'failure', 'always', got 'sometimes'"),
        (job("a", 'if = "failure"\n'), "jobs.a.if",
         '"failure" runs a job when one of its needs failed, and this job has no needs'),
        (job("a", "max_parallel = 0\n"), "jobs.a.max_parallel", "expected an integer >= 1, got 0"),
        (job("a", 'fail_fast = "yes"\n'), "jobs.a.fail_fast", "expected true or false, got 'yes'"),
        (job("a", "continue_on_error = 1\n"), "jobs.a.continue_on_error", "expected true or false, got 1"),
        (job("a", 'timeout = "soon"\n'), "jobs.a.timeout", "expected a duration like 90s, 5m or 1h30m, got 'soon'"),
        (job("a", 'snapshot = "sometimes"\n'), "jobs.a.snapshot",
         "expected one of 'always', 'on_success', 'on_failure', 'never', got 'sometimes'"),
        (job("a", 'image = ""\n'), "jobs.a.image", "expected a non-empty string, got ''"),
        (job("a", 'env = { A = 1 }\n'), "jobs.a.env.A", "expected a string, got 1"),
        (job("a", 'secrets = ["npm-token"]\n'), "jobs.a.secrets",
         "item 0: expected a secret name like NPM_TOKEN, got 'npm-token'"),
        (job("a", 'cache = { paths = ["/etc"] }\n'), "jobs.a.cache.paths",
         "item 0: expected a path inside the workspace (relative, without '..'), got '/etc'"),
        ('[jobs.a]\nsteps = [{ run = "x", timeout = "later" }]\n', "jobs.a.steps[0].timeout",
         "expected a duration like 90s, 5m or 1h30m, got 'later'"),
        ('[jobs.a]\nsteps = [{ name = "t", run = "x" }, { name = "t", run = "y" }]\n', "jobs.a.steps[1].name",
         "duplicate step name 't' (also jobs.a.steps[0])"),
    ],
)
def test_each_job_mistake_names_its_key(text: str, path: str, message: str) -> None:
    assert errors(text) == {path: message}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (job("lint") + job("test") + job("build", 'needs = ["tset"]\n'),
         {"jobs.build.needs[0]": 'unknown job "tset" (jobs: lint, test, build)'}),
        (job("a", 'needs = ["a"]\n'), {"jobs.a.needs[0]": "a job cannot need itself"}),
        (job("a") + job("b", 'needs = ["a", "a"]\n'), {"jobs.b.needs[1]": '"a" is already needed (needs[0])'}),
        (job("a", 'needs = "b"\n') + job("b"), {"jobs.a.needs": "expected an array of strings, got 'b'"}),
        (job("a", 'needs = ["b"]\n') + job("b", 'needs = ["a"]\n'), {"jobs": "cycle a -> b -> a"}),
        (job("a", 'needs = ["c"]\n') + job("b", 'needs = ["a"]\n') + job("c", 'needs = ["b"]\n'),
         {"jobs": "cycle a -> c -> b -> a"}),
    ],
    ids=["unknown", "itself", "twice", "not-an-array", "cycle-2", "cycle-3"],
)
def test_needs_mistakes(text: str, expected: dict[str, str]) -> None:
    assert errors(text) == expected


def test_every_cycle_is_named_once_with_the_other_mistakes() -> None:
    text = (job("a", 'needs = ["b"]\n') + job("b", 'needs = ["a", "nope"]\n') + job("lint")
            + job("x", 'needs = ["y", "lint"]\n') + job("y", 'needs = ["z"]\n') + job("z", 'needs = ["x"]\n')
            + job("tail", 'needs = ["x"]\n') + job("bad", 'timeout = "soon"\nneeds = ["bad"]\n'))
    with pytest.raises(ConfigError) as exc:
        parse_pipeline(text, ".forgeci.toml")
    assert [str(i) for i in exc.value.issues] == [
        ".forgeci.toml: jobs.bad.timeout: expected a duration like 90s, 5m or 1h30m, got 'soon'",
        '.forgeci.toml: jobs.b.needs[1]: unknown job "nope" (jobs: a, b, lint, x, y, z, tail, bad)',
        ".forgeci.toml: jobs: cycle a -> b -> a",
        ".forgeci.toml: jobs: cycle x -> y -> z -> x",
    ]


def test_a_cycle_through_thousands_of_jobs() -> None:
    jobs = {f"j{i}": {"needs": [f"j{(i + 1) % 3000}"], "steps": [{"run": "x"}]} for i in range(3000)}
    with pytest.raises(ConfigError) as exc:
        pipeline_from_dict({"jobs": jobs}, "api")
    (issue,) = exc.value.issues
    assert issue.path == "jobs" and issue.message.startswith("cycle j0 -> j1 -> j2 -> ")
    assert issue.message.endswith(" -> j2999 -> j0")


def test_round_trips_of_the_issue_example() -> None:
    p = parse_pipeline(ISSUE_EXAMPLE, "x")
    text = pipeline_to_toml(p)
    assert "[jobs.test]\n" in text and "[[jobs.test.steps]]\n" in text and 'if = "' not in text
    assert 'matrix = {python = ["3.11", "3.12"], db = ["sqlite", "postgres"]}' in text
    assert parse_pipeline(text, "x") == p
    as_dict = pipeline_to_dict(p)
    assert as_dict["jobs"]["build"] == {"needs": ["test"], "steps": [{"name": "step-1", "run": "python -m build"}]}
    assert pipeline_from_dict(json.loads(json.dumps(as_dict)), "x") == p
    assert parse_pipeline(tomli_w.dumps(as_dict), "x") == p


def test_round_trip_of_every_job_key() -> None:
    p = parse_pipeline('name = "all"\nimage = "top"\n[env]\nA = "1"\n'
                       '[jobs.a]\nsteps = [{ run = "echo ${{ matrix.n }}", env = { B = "2" }, timeout = 5 }]\n'
                       'if = "always"\nmatrix = { n = [1, 2], fast = [true, false], s = ["x y"] }\n'
                       'matrix_exclude = [{ n = 1, fast = true }]\nmatrix_include = [{ n = 3 }]\n'
                       'fail_fast = false\nmax_parallel = 3\ncontinue_on_error = true\nimage = "own"\n'
                       'timeout = "1h"\nbranches = ["main"]\nsnapshot = "never"\nsecrets = ["S"]\n'
                       'env = { C = "3", "D" = "4" }\ncache = { paths = ["p"], save = "always" }\n'
                       '[jobs.b]\nneeds = ["a"]\nif = "failure"\n' + STEPS, "x")
    text = pipeline_to_toml(p)
    assert "[jobs.a.env]\n" in text and "[jobs.a.cache]\n" in text and "[jobs.a.steps.env]\n" in text
    assert parse_pipeline(text, "x") == p
    assert pipeline_from_dict(json.loads(json.dumps(pipeline_to_dict(p))), "x") == p


def test_a_pipeline_object_can_be_built_in_code() -> None:
    p = Pipeline(jobs={"a": JobSpec(steps=(Step(name="s", run="x"),))})
    assert parse_pipeline(pipeline_to_toml(p), "x") == p


_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00$"), min_size=1, max_size=12)
_names = st.from_regex(r"[A-Z_][A-Z0-9_]{0,6}", fullmatch=True)
_matrix_values = st.lists(st.text("abc.19", min_size=1, max_size=4) | st.integers(-5, 5) | st.booleans(),
                          min_size=1, max_size=3, unique_by=lambda v: str(v).lower() if isinstance(v, bool) else str(v))
_steps = st.lists(st.builds(Step, name=_text, run=_text, timeout=st.none() | st.integers(1, 999).map(float),
                            env=st.dictionaries(_names, _text, max_size=2)),
                  min_size=1, max_size=3, unique_by=lambda s: s.name).map(tuple)


@st.composite
def _multi_job_pipelines(draw: st.DrawFn) -> Pipeline:
    names = draw(st.lists(st.from_regex(r"[a-z_][a-z0-9_-]{0,6}", fullmatch=True), min_size=1, max_size=4,
                          unique_by=lambda n: n.replace("-", "_")))
    jobs = {}
    for i, name in enumerate(names):
        matrix = draw(st.none() | st.dictionaries(st.sampled_from(["os", "py", "n"]), _matrix_values.map(tuple),
                                                  min_size=1, max_size=2))
        include = draw(st.lists(st.just({k: "extra" for k in matrix}), max_size=1).map(tuple)) if matrix else ()
        jobs[name] = JobSpec(
            needs=tuple(draw(st.lists(st.sampled_from(names[:i]), unique=True))) if i else (),
            matrix=matrix, matrix_include=include,
            fail_fast=draw(st.booleans()), max_parallel=draw(st.none() | st.integers(1, 9)),
            continue_on_error=draw(st.booleans()), image=draw(st.none() | _text),
            timeout=draw(st.none() | st.integers(1, 10**5).map(float)),
            branches=draw(st.none() | st.lists(_text, max_size=2).map(tuple)),
            snapshot=draw(st.none() | st.sampled_from(["always", "never"])),
            secrets=draw(st.none() | st.lists(_names, max_size=2).map(tuple)),
            env=draw(st.dictionaries(_names, _text, max_size=2)),
            cache=draw(st.none() | st.just(CacheSpec(paths=("node_modules",)))),
            steps=draw(_steps))
    return Pipeline(name=draw(st.none() | st.just("ci")), env=draw(st.dictionaries(_names, _text, max_size=2)),
                    jobs=jobs)


@settings(max_examples=100, deadline=None)
@given(_multi_job_pipelines())
def test_any_valid_multi_job_pipeline_round_trips(p: Pipeline) -> None:
    assert parse_pipeline(pipeline_to_toml(p), "x") == p
    assert pipeline_from_dict(json.loads(json.dumps(pipeline_to_dict(p))), "x") == p
