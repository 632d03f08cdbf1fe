"""Expanding a pipeline into the jobs to run: matrices, substitutions, order, overrides, and their mistakes."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
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
)
from config.plan import PlannedJob, env_name, expand, matrix_var, members_of, needs_var

MATRIX_2X3 = '''
[env]
LEVEL = "full"

[jobs.lint]
steps = [{ name = "ruff", run = "ruff check ." }]

[jobs.test]
needs = ["lint"]
matrix = { python = ["3.11", "3.12"], db = ["sqlite", "postgres", "mysql"] }
matrix_exclude = [{ python = "3.11", db = "mysql" }]
matrix_include = [{ db = "sqlite", python = "3.13" }]
max_parallel = 2
env = { DB_URL = "${{matrix.db}}://ci", WHICH = "py${{ matrix.python }}" }
[[jobs.test.steps]]
name = "pytest ${{ matrix.python }}"
run = "pytest --db ${{ matrix.db }}"
env = { PY = "${{  matrix.python  }}" }

[jobs.build]
needs = ["test"]
steps = [{ run = "python -m build" }]
'''


def plan(text: str) -> tuple[PlannedJob, ...]:
    return expand(parse_pipeline(text, ".forgeci.toml"))


def errors(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as exc:
        parse_pipeline(text, ".forgeci.toml")
    paths = [i.path for i in exc.value.issues]
    assert len(paths) == len(set(paths)), paths
    return {i.path: i.message for i in exc.value.issues}


def test_a_2x3_matrix_with_one_exclude_and_one_include_makes_6_members() -> None:
    planned = plan(MATRIX_2X3)
    tests = [p for p in planned if p.name == "test"]
    assert [p.display for p in tests] == [
        "test (python=3.11, db=sqlite)", "test (python=3.11, db=postgres)",
        "test (python=3.12, db=sqlite)", "test (python=3.12, db=postgres)", "test (python=3.12, db=mysql)",
        "test (python=3.13, db=sqlite)",  # the include, its keys in the matrix's order
    ]
    assert [p.matrix for p in tests][-1] == {"python": "3.13", "db": "sqlite"}
    assert list(tests[-1].matrix) == ["python", "db"]
    member = tests[4].pipeline
    assert member.name == "test" and member.jobs == {}
    assert member.env == {"LEVEL": "full", "DB_URL": "mysql://ci", "WHICH": "py3.12",
                          "MATRIX_PYTHON": "3.12", "MATRIX_DB": "mysql"}
    assert member.steps == (Step(name="pytest 3.12", run="pytest --db mysql", env={"PY": "3.12"}),)
    assert [p.pipeline.steps[0].run for p in tests] == [
        "pytest --db sqlite", "pytest --db postgres", "pytest --db sqlite", "pytest --db postgres",
        "pytest --db mysql", "pytest --db sqlite"]
    assert all((p.needs, p.max_parallel, p.fail_fast, p.condition) == (("lint",), 2, True, "success") for p in tests)
    assert members_of(planned, "test") == tuple(p.display for p in tests)
    assert members_of(planned, "lint") == ("lint",) and members_of(planned, "nope") == ()


def test_jobs_without_a_matrix_and_dependants() -> None:
    planned = plan(MATRIX_2X3)
    lint, build = planned[0], planned[-1]
    assert (lint.display, build.display) == ("lint", "build")
    assert (lint.matrix, lint.needs, lint.pipeline.env, lint.pipeline.name) == ({}, (), {"LEVEL": "full"}, "lint")
    assert build.needs == ("test",) and build.pipeline.steps == (Step(name="step-1", run="python -m build"),)
    with pytest.raises(dataclasses.FrozenInstanceError):
        build.display = "x"  # type: ignore[misc]


def test_the_one_job_form_is_one_job_running_the_pipeline_itself() -> None:
    p = parse_pipeline('timeout = "5m"\n[[steps]]\nrun = "echo ${{ github.sha }}"\n', "f")
    (only,) = expand(p)
    assert only.pipeline is p  # run exactly as today, `${{` and all
    assert (only.name, only.display, only.matrix, only.needs, only.condition) == ("ci", "ci", {}, (), "success")
    assert (only.continue_on_error, only.fail_fast, only.max_parallel) == (False, True, None)
    named = parse_pipeline('name = "check"\n[[steps]]\nrun = "x"\n', "f")
    assert [(j.name, j.display) for j in expand(named)] == [("check", "check")]


def test_a_members_pipeline_expands_to_itself() -> None:
    for member in plan(MATRIX_2X3):
        (again,) = expand(member.pipeline)
        assert (again.name, again.pipeline) == (member.name, member.pipeline)
        # What the engine may store for a member (a dict, like an API submission) reads back the same.
        assert pipeline_from_dict(pipeline_to_dict(member.pipeline), "x") == member.pipeline


def test_dependency_order_with_ties_in_file_order() -> None:
    text = ""
    for name, needs in [("deploy", ["build", "docs"]), ("build", ["test"]), ("docs", []), ("test", ["lint"]),
                        ("lint", []), ("notify", ["deploy"]), ("audit", [])]:
        text += f"[jobs.{name}]\nneeds = {needs!r}\n".replace("'", '"') + 'steps = [{ run = "x" }]\n'
    assert [p.name for p in plan(text)] == ["docs", "lint", "test", "build", "deploy", "notify", "audit"]


def test_overrides_replace_the_top_level_and_env_merges() -> None:
    planned = plan('''
image = "top-image"
timeout = "30m"
branches = ["main"]
snapshot = "on_failure"
secrets = ["NPM_TOKEN"]
[env]
A = "top"
B = "top"
[cache]
paths = ["node_modules"]

[jobs.plain]
steps = [{ run = "x" }]

[jobs.own]
image = "own-${{ matrix.os }}"
timeout = "5m"
branches = []
snapshot = "never"
secrets = []
env = { B = "job", C = "job" }
cache = { paths = [".venv"], save = "always" }
matrix = { os = ["debian"] }
if = "always"
continue_on_error = true
fail_fast = false
steps = [{ run = "x", env = { C = "step" } }]
''')
    plain, own = (p.pipeline for p in planned)
    assert (plain.image, plain.timeout, plain.branches, plain.snapshot, plain.secrets, plain.env, plain.cache) == (
        "top-image", 1800.0, ("main",), "on_failure", ("NPM_TOKEN",), {"A": "top", "B": "top"},
        CacheSpec(paths=("node_modules",)))
    assert (own.image, own.timeout, own.branches, own.snapshot, own.secrets, own.cache) == (
        "own-debian", 300.0, (), "never", (), CacheSpec(paths=(".venv",), save="always"))
    assert own.env == {"A": "top", "B": "job", "C": "job", "MATRIX_OS": "debian"}
    assert own.steps[0].env == {"C": "step"}  # a step's env still goes over the job's, as the executor does
    assert plain.applies_to("refs/heads/dev") is False and own.applies_to("refs/heads/dev") is True
    assert (planned[1].condition, planned[1].continue_on_error, planned[1].fail_fast) == ("always", True, False)


def test_matrix_variables_win_over_the_files_env() -> None:
    (member,) = plan('[env]\nMATRIX_OS = "mine"\n[jobs.a]\nmatrix = { os = ["x"] }\nsteps = [{ run = "r" }]\n')
    assert member.pipeline.env == {"MATRIX_OS": "x"}


def test_integers_and_booleans_are_shown_as_toml_writes_them() -> None:
    planned = plan('[jobs.t]\nmatrix = { n = [1, -2], fast = [true], "node-version" = ["20"] }\n'
                   'steps = [{ name = "n${{ matrix.n }}", '
                   'run = "echo ${{ matrix.fast }} ${{ matrix.node-version }}" }]\n')
    assert [p.display for p in planned] == ["t (n=1, fast=true, node-version=20)",
                                            "t (n=-2, fast=true, node-version=20)"]
    assert planned[0].matrix == {"n": 1, "fast": True, "node-version": "20"}
    assert planned[1].pipeline.env == {"MATRIX_N": "-2", "MATRIX_FAST": "true", "MATRIX_NODE_VERSION": "20"}
    assert planned[1].pipeline.steps[0] == Step(name="n-2", run="echo true 20")


def test_an_include_only_matrix_has_exactly_its_members() -> None:
    planned = plan('[jobs.t]\nmatrix_include = [{ os = "linux" }, { os = "mac", arch = "arm" }]\n'
                   'steps = [{ run = "build ${{ matrix.os }}" }]\n')
    assert [p.display for p in planned] == ["t (os=linux)", "t (os=mac, arch=arm)"]
    assert planned[1].pipeline.env == {"MATRIX_OS": "mac", "MATRIX_ARCH": "arm"}


def test_an_include_may_bring_back_an_excluded_combination() -> None:
    planned = plan('[jobs.t]\nmatrix = { a = ["1", "2"] }\nmatrix_exclude = [{ a = "1" }]\n'
                   'matrix_include = [{ a = "1" }]\nsteps = [{ run = "x" }]\n')
    assert [p.display for p in planned] == ["t (a=2)", "t (a=1)"]


def test_256_members_are_allowed_and_257_are_not() -> None:
    axis = ", ".join(f'"v{i}"' for i in range(256))
    assert len(plan(f"[jobs.big]\nmatrix = {{ v = [{axis}] }}\n" + 'steps = [{ run = "x" }]\n')) == 256
    assert errors(f"[jobs.big]\nmatrix = {{ v = [{axis}, \"v256\"] }}\n" + 'steps = [{ run = "x" }]\n') == {
        "jobs.big.matrix": "expands to 257 members; at most 256 are allowed"}
    assert errors(f"[jobs.big]\nmatrix = {{ v = [{axis}] }}\nmatrix_include = [{{ v = \"extra\" }}]\n"
                  'steps = [{ run = "x" }]\n') == {"jobs.big.matrix": "expands to 257 members; at most 256 are allowed"}
    # 16 x 17 = 272 combinations, 16 excluded: 256 members.
    wide = ", ".join(str(i) for i in range(17))
    assert len(plan(f"[jobs.w]\nmatrix = {{ a = [{wide[:wide.index(', 16')]}], b = [{wide}] }}\n"
                    "matrix_exclude = [{ b = 16 }]\n" + 'steps = [{ run = "x" }]\n')) == 256


def test_a_huge_product_is_refused_before_expanding() -> None:
    axes = ", ".join(f"a{i} = [1, 2, 3, 4]" for i in range(20))
    assert errors(f"[jobs.t]\nmatrix = {{ {axes} }}\n" + 'steps = [{ run = "x" }]\n') == {
        "jobs.t.matrix": "makes 1099511627776 combinations (its axes' product, plus includes); at most 4096 can "
                         "be expanded, and at most 256 members run"}
    wide = "matrix = { " + ", ".join(f"{k} = [1, 2, 3, 4]" for k in "abcde") + " }\n"
    exclude = "matrix_exclude = [{ a = 1 }, { a = 2 }, { a = 3 }]\n"
    assert len(plan(f"[jobs.t]\n{wide}{exclude}" + 'steps = [{ run = "x" }]\n')) == 256
    # 256 + 4 x 1024: every job within its limit, but not the file.
    jobs = "".join(f"[jobs.j{i}]\n{wide}{exclude}" + 'steps = [{ run = "x" }]\n' for i in range(4))
    assert errors(jobs + "[jobs.small]\nmatrix = { v = [1] }\n" + 'steps = [{ run = "x" }]\n') == {
        "jobs": "the matrices make 4097 combinations in all; at most 4096 can be expanded"}
    includes = ", ".join(f"{{ v = {i} }}" for i in range(4097))
    assert errors(f"[jobs.t]\nmatrix_include = [{includes}]\n" + 'steps = [{ run = "x" }]\n') == {
        "jobs.t.matrix_include": "makes 4097 combinations (its axes' product, plus includes); at most 4096 can be "
                                 "expanded, and at most 256 members run"}


def matrix_job(body: str, run: str = "x") -> str:
    return f'[jobs.t]\nmatrix = {{ python = ["3.11", "3.12"], db = ["sqlite", "postgres"] }}\n{body}' \
           f'steps = [{{ run = "{run}" }}]\n'


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ("[jobs.t]\nmatrix = []\n" + "steps = [{ run = 'x' }]\n", "jobs.t.matrix",
         'expected a table of axes like { python = ["3.11", "3.12"] }, got an empty array'),
        ("[jobs.t]\nmatrix = {}\n" + "steps = [{ run = 'x' }]\n", "jobs.t.matrix",
         'expected a table of axes like { python = ["3.11", "3.12"] }, got an empty table'),
        ("[jobs.t]\nmatrix = { python = [] }\n" + "steps = [{ run = 'x' }]\n", "jobs.t.matrix.python",
         "expected a non-empty array of strings, integers or booleans, got an empty array"),
        ("[jobs.t]\nmatrix = { python = \"3.11\" }\n" + "steps = [{ run = 'x' }]\n", "jobs.t.matrix.python",
         "expected a non-empty array of strings, integers or booleans, got '3.11'"),
        ("[jobs.t]\nmatrix = { python = [\"3.11\", 3.10] }\n" + "steps = [{ run = 'x' }]\n",
         "jobs.t.matrix.python[1]",
         'expected a string, integer or boolean, got 3.1 (write "3.1" in quotes to keep it as written)'),
        ("[jobs.t]\nmatrix = { os = [[\"a\"]] }\n" + "steps = [{ run = 'x' }]\n", "jobs.t.matrix.os[0]",
         "expected a string, integer or boolean, got an array"),
        ("[jobs.t]\nmatrix = { os = [1979-05-27] }\n" + "steps = [{ run = 'x' }]\n", "jobs.t.matrix.os[0]",
         "expected a string, integer or boolean, got a date"),
        ("[jobs.t]\nmatrix = { n = [\"3\", 3] }\n" + "steps = [{ run = 'x' }]\n", "jobs.t.matrix.n[1]",
         'duplicate value "3" (also n[0])'),
        ("[jobs.t]\nmatrix = { \"a b\" = [1] }\n" + "steps = [{ run = 'x' }]\n", "jobs.t.matrix",
         "expected matrix keys of letters, digits, \"-\" and \"_\", starting with a letter or \"_\", got 'a b'"),
        ("[jobs.t]\nmatrix = { db-x = [1], db_x = [2] }\n" + "steps = [{ run = 'x' }]\n", "jobs.t.matrix.db_x",
         '"db-x" and "db_x" would both be MATRIX_DB_X'),
        (matrix_job('matrix_exclude = [{ os = "linux" }]\n'), "jobs.t.matrix_exclude[0].os",
         "unknown matrix key (matrix keys: python, db)"),
        (matrix_job('matrix_exclude = [{ db = "postgress" }]\n'), "jobs.t.matrix_exclude[0].db",
         '"postgress" is not a value of matrix.db (values: sqlite, postgres)'),
        (matrix_job('matrix_exclude = [{}]\n'), "jobs.t.matrix_exclude[0]",
         'expected a table of matrix values like { python = "3.11" }, got an empty table'),
        (matrix_job('matrix_exclude = { db = "sqlite" }\n'), "jobs.t.matrix_exclude",
         'expected an array of tables like { python = "3.11" }, got a table'),
        (matrix_job('matrix_exclude = [{ db = 1.5 }]\n'), "jobs.t.matrix_exclude[0].db",
         'expected a string, integer or boolean, got 1.5 (write "1.5" in quotes to keep it as written)'),
        (matrix_job("matrix_exclude = [" + ", ".join(['{ db = "sqlite" }'] * 257) + "]\n"), "jobs.t.matrix_exclude",
         "expected at most 256 entries, got 257"),
        ('[jobs.t]\nmatrix_exclude = [{ db = "sqlite" }]\n' + "steps = [{ run = 'x' }]\n", "jobs.t.matrix_exclude",
         "there is no matrix to exclude from"),
        (matrix_job('matrix_include = [{ python = "3.13", os = "mac" }]\n'), "jobs.t.matrix_include[0].os",
         "unknown matrix key (an include may only use the matrix's keys: python, db)"),
        (matrix_job('matrix_exclude = [{ python = "3.11" }, { python = "3.12" }]\n'), "jobs.t.matrix",
         "expands to no members: matrix_exclude removes every combination"),
        (matrix_job('matrix_include = [{ db = "sqlite", python = "3.12" }]\n'), "jobs.t.matrix_include[0]",
         'duplicate member "t (python=3.12, db=sqlite)" (also made by the matrix)'),
        (matrix_job('matrix_include = [{ python = "3.13" }, { python = "3.13" }]\n'), "jobs.t.matrix_include[1]",
         'duplicate member "t (python=3.13)" (also made by matrix_include[0])'),
    ],
)
def test_each_matrix_mistake_names_its_key(text: str, path: str, message: str) -> None:
    assert errors(text) == {path: message}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (matrix_job("", "pytest ${{ matrix.dbs }}"),
         {"jobs.t.steps[0].run": 'unknown matrix key "dbs" (matrix keys: python, db)'}),
        ('[jobs.lint]\nsteps = [{ name = "on ${{ matrix.os }}", run = "x" }]\n',
         {"jobs.lint.steps[0].name": '${{ matrix.os }}: job "lint" has no matrix'}),
        (matrix_job("", "echo ${{ github.sha }}"),
         {"jobs.t.steps[0].run": "only ${{ matrix.KEY }} is supported, got ${{ github.sha }}"}),
        (matrix_job("", "echo ${{ matrix }}"), {"jobs.t.steps[0].run": "only ${{ matrix.KEY }} is supported, "
                                                                          "got ${{ matrix }}"}),
        (matrix_job("", "echo ${{ matrix.db"), {"jobs.t.steps[0].run": "unclosed ${{ (expected ${{ matrix.KEY }})"}),
        (matrix_job('image = "img:${{ matrix.os }}"\n'),
         {"jobs.t.image": 'unknown matrix key "os" (matrix keys: python, db)'}),
        (matrix_job('env = { A = "${{ env.HOME }}" }\n'),
         {"jobs.t.env.A": "only ${{ matrix.KEY }} is supported, got ${{ env.HOME }}"}),
        ('[jobs.t]\nmatrix = { a = [1] }\nsteps = [{ run = "x", env = { B = "${{ matrix.b }}" } }]\n',
         {"jobs.t.steps[0].env.B": 'unknown matrix key "b" (matrix keys: a)'}),
        (matrix_job('matrix_include = [{ python = "3.13" }, { python = "3.14" }]\n', "x ${{ matrix.db }}"),
         {"jobs.t.steps[0].run": '${{ matrix.db }}: member "t (python=3.13)" and 1 more has no db'}),
        # Top-level texts are checked in every job that uses them; a problem of the text itself is said once.
        (('[env]\nX = "${{ secrets.X }}"\n[jobs.a]\nmatrix = { os = ["l"] }\nsteps = [{ run = "x" }]\n'
          '[jobs.b]\nsteps = [{ run = "x" }]\n[jobs.c]\nsteps = [{ run = "x" }]\n'),
         {"env.X": "only ${{ matrix.KEY }} is supported, got ${{ secrets.X }}"}),
        ('[jobs.t]\nmatrix = { x = ["", "a"] }\nsteps = [{ name = "${{ matrix.x }}", run = "${{ matrix.x }}" }]\n',
         {"jobs.t.steps[0].name": 'empty in "t (x=)"', "jobs.t.steps[0].run": 'empty in "t (x=)"'}),
        (('[jobs.t]\nmatrix = { x = ["a"] }\nsteps = [{ name = "s-${{ matrix.x }}", run = "1" }, '
          '{ name = "s-a", run = "2" }]\n'),
         {"jobs.t.steps[1].name": 'duplicate step name "s-a" in "t (x=a)" (also steps[0])'}),
    ],
    ids=["unknown-key", "no-matrix", "other-expression", "bare-matrix", "unclosed", "image", "job-env", "step-env",
         "member-lacks-key", "top-level-once", "empty-after-substitution", "duplicate-step-after-substitution"],
)
def test_substitution_mistakes(text: str, expected: dict[str, str]) -> None:
    assert errors(text) == expected


def test_a_top_level_text_is_checked_in_each_job_that_uses_it() -> None:
    text = ('image = "i:${{ matrix.os }}"\n[env]\nY = "${{ matrix.os }}"\n'
            '[jobs.a]\nmatrix = { os = ["l"] }\nsteps = [{ run = "x" }]\n'
            '[jobs.b]\nsteps = [{ run = "x" }]\n'
            '[jobs.c]\nsteps = [{ run = "x" }]\nenv = { Y = "mine" }\n'
            '[jobs.d]\nmatrix = { n = [1] }\nimage = "own"\nsteps = [{ run = "x" }]\n')
    with pytest.raises(ConfigError) as exc:
        parse_pipeline(text, "f")
    assert [(i.path, i.message) for i in exc.value.issues] == [
        ("image", '${{ matrix.os }}: job "b" has no matrix'),
        ("env.Y", '${{ matrix.os }}: job "b" has no matrix'),
        ("image", '${{ matrix.os }}: job "c" has no matrix'),  # c has its own Y, not its own image
        ("env.Y", 'unknown matrix key "os" (matrix keys: n) (in job "d")'),  # d has its own image
    ]


def test_expand_checks_a_pipeline_built_in_code() -> None:
    step = Step(name="s", run="x")
    with pytest.raises(ConfigError, match="expected at least one"):
        expand(Pipeline())
    with pytest.raises(ConfigError, match="cannot be used with"):
        expand(Pipeline(steps=(step,), jobs={"a": JobSpec(steps=(step,))}))
    with pytest.raises(ConfigError) as exc:
        expand(Pipeline(jobs={"a": JobSpec(needs=("b",), steps=(step,)), "b": JobSpec(needs=("a",), steps=(step,))}),
               "built")
    assert [str(i) for i in exc.value.issues] == ["built: jobs: cycle a -> b -> a"]
    with pytest.raises(ConfigError) as exc:
        expand(Pipeline(jobs={"a": JobSpec(matrix={"x": ("1",)}, steps=(Step(name="s", run="${{ matrix.y }}"),))}))
    assert [i.path for i in exc.value.issues] == ["jobs.a.steps[0].run"]


def test_variable_names() -> None:
    assert env_name("node-version") == "NODE_VERSION" and env_name("a.b c") == "A_B_C" and env_name("é") == "_"
    assert matrix_var("python") == "MATRIX_PYTHON"
    assert needs_var("build-docs", "version") == "NEEDS_BUILD_DOCS_VERSION"


_values = st.lists(st.from_regex(r"[a-z0-9.]{1,4}", fullmatch=True), min_size=1, max_size=4, unique=True)


@st.composite
def _matrices(draw: st.DrawFn) -> tuple[dict[str, list[str]], list[dict[str, str]], list[dict[str, str]]]:
    axes = draw(st.dictionaries(st.sampled_from(["a", "b", "c"]), _values, min_size=1))
    keys = list(axes)
    excludes = draw(st.lists(st.fixed_dictionaries({}, optional={k: st.sampled_from(axes[k]) for k in keys})
                             .filter(bool), max_size=4))
    # Fresh values ("new-N"), so includes never equal a product member or each other.
    includes = [{k: f"new-{i}" for k in draw(st.lists(st.sampled_from(keys), min_size=1, unique=True))}
                for i in range(draw(st.integers(0, 3)))]
    return axes, excludes, includes


@settings(max_examples=150, deadline=None)
@given(_matrices())
def test_expansion_size_is_product_minus_excluded_plus_included(
        m: tuple[dict[str, list[str]], list[dict[str, str]], list[dict[str, str]]]) -> None:
    axes, excludes, includes = m
    combos = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    excluded = sum(any(all(c[k] == v for k, v in e.items()) for e in excludes) for c in combos)
    spec = {"matrix": axes, "matrix_exclude": excludes, "matrix_include": includes,
            "steps": [{"run": " ".join(f"${{{{ matrix.{k} }}}}" for k in axes) if not includes else "x"}]}
    if len(combos) == excluded and not includes:
        with pytest.raises(ConfigError, match="expands to no members"):
            pipeline_from_dict({"jobs": {"t": spec}}, "x")
        return
    planned = expand(pipeline_from_dict({"jobs": {"t": spec}}, "x"))
    assert len(planned) == len(combos) - excluded + len(includes)
    assert len({p.display for p in planned}) == len(planned)
    for p in planned[:len(planned) - len(includes)]:
        assert not any(all(p.matrix[k] == v for k, v in e.items()) for e in excludes)
        assert p.pipeline.steps[0].run == " ".join(p.matrix[k] for k in axes) or includes
    assert [p.matrix for p in planned[len(planned) - len(includes):]] == [
        {k: inc[k] for k in axes if k in inc} for inc in includes]
