"""`forgeci init`: what it detects in small fixture projects, and that every file it writes passes `config check`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from config.check import check_file
from config.errors import ConfigError
from config.pipeline import Pipeline, load_pipeline, parse_pipeline
from config.starter import detect_project, starter_pipeline, write_starter

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "starter"
GLOBAL = "npm install -g --no-fund --no-audit"
COREPACK = f"{GLOBAL} corepack && corepack enable"
VENV = "python3 -m venv .venv && .venv/bin/pip install"


def project(root: Path, files: dict[str, Any]) -> Path:
    """Files under `root`: a dict or list value is written as JSON (package.json), a string as it is."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return root


def written(root: Path) -> tuple[Pipeline, str]:
    """Run `forgeci init`'s writer in `root`; the file must pass `config check`."""
    path = write_starter(root)
    assert check_file(path) == [], path.read_text()
    return load_pipeline(path), path.read_text()


def steps(pipeline: Pipeline, job: str = "test") -> list[tuple[str, str]]:
    return [(s.name, s.run) for s in pipeline.jobs[job].steps]


NODE_TEST = {"name": "x", "scripts": {"test": "node test.js"}}


@pytest.mark.parametrize(
    ("files", "install", "test", "cache_dir", "keys"),
    [
        ({"package.json": NODE_TEST}, "npm install", "npm test", "npm", ["package.json"]),
        ({"package.json": NODE_TEST, "package-lock.json": "{}"}, "npm ci", "npm test", "npm",
         ["package.json", "package-lock.json"]),
        ({"package.json": NODE_TEST, "yarn.lock": ""}, f"{GLOBAL} yarn@1 && yarn install --frozen-lockfile",
         "yarn test", "yarn", ["package.json", "yarn.lock"]),
        ({"package.json": NODE_TEST, "pnpm-lock.yaml": ""}, f"{GLOBAL} pnpm@latest && pnpm install --frozen-lockfile",
         "pnpm test", "pnpm-store", ["package.json", "pnpm-lock.yaml"]),
        ({"package.json": NODE_TEST, "bun.lockb": ""}, "bun install --frozen-lockfile", "bun run test", "bun",
         ["package.json", "bun.lockb"]),
        ({"package.json": NODE_TEST, "bun.lock": ""}, "bun install --frozen-lockfile", "bun run test", "bun",
         ["package.json", "bun.lock"]),
        ({"package.json": {**NODE_TEST, "packageManager": "pnpm@9.1.0+sha512.ab12"}},
         f"{GLOBAL} pnpm@9.1.0 && pnpm install",
         "pnpm test", "pnpm-store", ["package.json"]),
        ({"package.json": {**NODE_TEST, "packageManager": "yarn@4.1.0"}, "yarn.lock": ""},
         f"{COREPACK} && yarn install --immutable", "yarn test", "yarn", ["package.json", "yarn.lock"]),
        ({"package.json": {**NODE_TEST, "packageManager": "yarn@1.22.19"}}, f"{GLOBAL} yarn@1.22.19 && yarn install",
         "yarn test", "yarn", ["package.json"]),
        ({"package-lock.json": "{}"}, "npm ci", None, "npm", ["package-lock.json"]),  # a lockfile alone
    ],
)
def test_node_projects(tmp_path: Path, files: dict[str, Any], install: str, test: str | None, cache_dir: str,
                       keys: list[str]) -> None:
    project(tmp_path, files)
    assert detect_project(tmp_path) == ["node"]
    pipeline, text = written(tmp_path)
    assert list(pipeline.jobs) == ["test"]
    assert steps(pipeline) == [("install", install)] + ([("test", test)] if test else [])
    job = pipeline.jobs["test"]
    assert job.cache is not None and "node_modules" in job.cache.paths and list(job.cache.key_files) == keys
    assert f".forgeci-cache/{cache_dir}" in job.cache.paths
    corepack = install.startswith(COREPACK)
    assert job.env.pop("COREPACK_ENABLE_DOWNLOAD_PROMPT", None) == ("0" if corepack else None)
    assert all(value.startswith("/workspace/.forgeci-cache/") for value in job.env.values()) and job.env
    assert "# Node (" in text and ("no lockfile" in text) == (len(keys) == 1 and keys[0] == "package.json")


def test_node_lint_is_a_job_of_its_own_and_the_npm_placeholder_test_is_not_run(tmp_path: Path) -> None:
    project(tmp_path, {"package.json": {"scripts": {"test": 'echo "Error: no test specified" && exit 1',
                                                    "build": "tsc", "lint": "eslint ."}}})
    pipeline, text = written(tmp_path)
    assert list(pipeline.jobs) == ["test", "lint"]
    assert steps(pipeline) == [("install", "npm install"), ("build", "npm run build")]
    assert steps(pipeline, "lint") == [("install", "npm install"), ("lint", "npm run lint")]
    assert "# scripts.lint: eslint .\n[jobs.lint]\n" in text
    assert "no scripts.test (or npm's placeholder): runs scripts.build instead" in text


def test_a_broken_package_json_still_gives_a_valid_file(tmp_path: Path) -> None:
    project(tmp_path, {"package.json": "{ not json"})
    pipeline, text = written(tmp_path)
    assert steps(pipeline) == [("install", "npm install")]
    assert "package.json is not a JSON object" in text


PYPROJECT = '[project]\nname = "demo"\nversion = "1.0"\n'


@pytest.mark.parametrize(
    ("files", "install", "test", "why"),
    [
        ({"pyproject.toml": PYPROJECT, "tests/test_a.py": ""}, f"{VENV} -e .",
         ".venv/bin/python -m unittest discover -s tests", "tests: unittest (no pytest configured or depended on)"),
        ({"pyproject.toml": PYPROJECT, "tests/__init__.py": ""}, f"{VENV} -e .",
         ".venv/bin/python -m unittest discover -s tests -t .", "pyproject.toml: [project] -> pip install -e ."),
        ({"pyproject.toml": PYPROJECT + '[project.optional-dependencies]\ntest = ["pytest>=7", "hypothesis"]\n'
                                        'docs = ["sphinx"]\n'},
         f"{VENV} -e '.[test]'", ".venv/bin/python -m pytest", "optional-dependencies: extra 'test'"),
        ({"pyproject.toml": PYPROJECT + '[dependency-groups]\ndev = [{include-group = "tests"}, "ruff"]\n'
                                        'tests = ["pytest", "coverage[toml]>=7"]\n'},
         f"{VENV} -e . pytest 'coverage[toml]>=7' ruff", ".venv/bin/python -m pytest",
         "pyproject.toml: dependency group 'tests'"),
        ({"pyproject.toml": PYPROJECT + '[tool.pytest.ini_options]\naddopts = "-q"\n'},
         f"{VENV} -e . pytest", ".venv/bin/python -m pytest", "[tool.pytest] in pyproject.toml; installed"),
        ({"pyproject.toml": '[tool.ruff]\nline-length = 100\n', "requirements.txt": "requests\n"},
         f"{VENV} -r requirements.txt", ".venv/bin/python -m unittest", "requirements files: requirements.txt"),
        ({"setup.py": "from setuptools import setup\nsetup()\n", "test_x.py": ""}, f"{VENV} -e .",
         ".venv/bin/python -m unittest", "setup.py -> pip install -e ."),
        ({"setup.cfg": "[metadata]\nname = demo\n[options.extras_require]\ntests =\n    pytest\n"},
         f"{VENV} -e '.[tests]'", ".venv/bin/python -m pytest", "setup.cfg: extra 'tests'"),
        ({"setup.cfg": "[metadata]\nname = demo\n[tool:pytest]\ntestpaths = tests\n"},
         f"{VENV} -e . pytest", ".venv/bin/python -m pytest", "[tool:pytest] in setup.cfg"),
        ({"requirements.txt": "flask\n", "requirements/test.txt": "-r ../requirements.txt\npytest\n",
          "requirements/docs.txt": "sphinx\n"},
         f"{VENV} -r requirements.txt -r requirements/test.txt", ".venv/bin/python -m pytest",
         "tests: pytest (a test dependency)"),
        ({"requirements.txt": "", "requirements-dev.txt": "pytest\n", "requirements-docs.txt": "sphinx\n"},
         f"{VENV} -r requirements.txt -r requirements-dev.txt", ".venv/bin/python -m pytest",
         "(not requirements-docs.txt)"),
        ({"requirements/base.txt": "pytest==8.0\n", "requirements/tests.txt": "-r base.txt\n--requirement=x.txt\n",
          "requirements/x.txt": "-r tests.txt\n", "pyproject.toml": PYPROJECT},
         f"{VENV} -r requirements/tests.txt -e .", ".venv/bin/python -m pytest", "tests: pytest (a test dependency)"),
        ({"requirements-docs.txt": "sphinx\n"}, f"{VENV} -r requirements-docs.txt", ".venv/bin/python -m unittest",
         "Python: requirements-docs.txt"),
        ({"tox.ini": "[tox]\nenvlist = py3\n[testenv]\ndeps = pytest\ncommands = pytest\n", "setup.py": ""},
         f"{VENV} -e . pytest", ".venv/bin/python -m pytest", "tests: pytest (tox.ini tests with it; installed"),
        ({"tox.ini": "[testenv]\ndeps =\n    pytest-cov\n    pytest\ncommands = python -m unittest\n",
          "pyproject.toml": PYPROJECT + '[project.optional-dependencies]\ntest = ["pytest"]\n'},
         f"{VENV} -e '.[test]'", ".venv/bin/python -m pytest", "tests: pytest (a test dependency)"),
        ({"tox.ini": "[pytest]\nminversion = 7\n"}, f"{VENV} pytest", ".venv/bin/python -m pytest",
         "[pytest] in tox.ini"),
        ({"pyproject.toml": PYPROJECT, "conftest.py": ""}, f"{VENV} -e . pytest", ".venv/bin/python -m pytest",
         "(conftest.py; installed"),
        ({"uv.lock": "", "pyproject.toml": PYPROJECT},
         f"{VENV} uv && .venv/bin/uv sync --frozen --inexact", ".venv/bin/python -m pytest", "Python (uv): uv.lock"),
        ({"poetry.lock": ""},
         "python3 -m venv .venv && . .venv/bin/activate && pip install poetry && poetry install --no-interaction",
         ".venv/bin/python -m pytest", "Python (Poetry): poetry.lock"),
    ],
)
def test_python_projects(tmp_path: Path, files: dict[str, str], install: str, test: str, why: str) -> None:
    project(tmp_path, files)
    assert detect_project(tmp_path) == ["python"]
    pipeline, text = written(tmp_path)
    assert steps(pipeline) == [("install", install), ("test", test)]
    assert why in text
    job = pipeline.jobs["test"]
    assert job.cache is not None and ".venv" in job.cache.paths and job.cache.key_files
    assert set(job.cache.key_files) <= set(files)
    assert any(value.startswith("/workspace/.forgeci-cache/") for value in job.env.values())


def test_an_unreadable_pyproject_still_gives_a_valid_file(tmp_path: Path) -> None:
    project(tmp_path, {"pyproject.toml": "[project\nname = ", "setup.cfg": "not an ini [file"})
    pipeline, text = written(tmp_path)
    assert steps(pipeline) == [("install", "python3 -m venv .venv"), ("test", ".venv/bin/python -m unittest")]
    assert "pyproject.toml does not parse" in text


@pytest.mark.parametrize(
    ("files", "kind", "run", "image"),
    [
        ({"go.mod": "module x\n"}, "go", ["go build ./...", "go test ./..."], "docker.io/library/golang:1"),
        ({"go.mod": "module x\n", "go.sum": ""}, "go", ["go build ./...", "go test ./..."],
         "docker.io/library/golang:1"),
        ({"Cargo.toml": "[package]\n"}, "rust", ["cargo build", "cargo test"], "docker.io/library/rust:1"),
        ({"Cargo.toml": "[package]\n", "Cargo.lock": ""}, "rust", ["cargo build --locked", "cargo test --locked"],
         "docker.io/library/rust:1"),
        ({"Makefile": "all:\n\tcc x.c\n\ntest: all\n\t./run-tests\n"}, "make", ["make test"], None),
    ],
)
def test_go_rust_and_make(tmp_path: Path, files: dict[str, str], kind: str, run: list[str], image: str | None) -> None:
    project(tmp_path, files)
    assert detect_project(tmp_path) == [kind]
    pipeline, text = written(tmp_path)
    assert [r for _, r in steps(pipeline)] == run
    assert pipeline.jobs["test"].image == image
    if image:
        assert f"this job uses {image}" in text
        assert pipeline.jobs["test"].cache is not None


def test_a_makefile_without_a_test_target_is_not_a_project(tmp_path: Path) -> None:
    project(tmp_path, {"Makefile": "test := unit\nall:\n\techo $(test)\n"})
    assert detect_project(tmp_path) == []


def test_node_and_python_in_one_repository_get_one_job_each(tmp_path: Path) -> None:
    project(tmp_path, {"package.json": {"scripts": {"test": "jest", "lint": "eslint ."}},
                       "pyproject.toml": PYPROJECT, "Makefile": "test:\n\tpytest\n"})
    assert detect_project(tmp_path) == ["node", "python"]
    pipeline, text = written(tmp_path)
    assert list(pipeline.jobs) == ["node", "node-lint", "python"]
    assert steps(pipeline, "node") == [("install", "npm install"), ("test", "npm test")]
    assert steps(pipeline, "python")[0] == ("install", f"{VENV} -e .")
    assert text.startswith("# forgeci pipeline, written by `forgeci init` (detected: node, python).\n")
    assert "# Makefile has a test target too" in text
    assert "# Python: pyproject.toml\n" in text and "# Node (npm): package.json, no lockfile\n" in text
    caches = {name: job.cache.paths for name, job in pipeline.jobs.items() if job.cache}
    assert ".venv" in caches["python"] and "node_modules" in caches["node"] and ".venv" not in caches["node"]


def test_lockfile_names_must_be_files(tmp_path: Path) -> None:
    (tmp_path / "go.sum").mkdir()
    (tmp_path / "package.json").mkdir()
    (tmp_path / "requirements.txt.d").mkdir()
    assert detect_project(tmp_path) == []


def test_nothing_detected_still_gives_a_valid_pipeline(tmp_path: Path) -> None:
    data = starter_pipeline(tmp_path)
    assert len(data["steps"]) == 1 and data["steps"][0]["run"].startswith("echo ")
    path = write_starter(tmp_path)
    assert check_file(path) == []
    assert load_pipeline(path).steps[0].name == "hello"
    assert "Nothing was recognised" in path.read_text()


@pytest.mark.parametrize("name", ["node-nolock", "python-pyproject"])
def test_the_fixture_projects_of_the_real_engine_tests(tmp_path: Path, name: str) -> None:
    import shutil

    root = tmp_path / name
    shutil.copytree(FIXTURES / name, root)
    pipeline, _ = written(root)
    expected = {"node-nolock": [("install", "npm install"), ("test", "npm test")],
                "python-pyproject": [("install", f"{VENV} -e ."),
                                     ("test", ".venv/bin/python -m unittest discover -s tests")]}[name]
    assert steps(pipeline) == expected


def test_write_starter_writes_a_valid_readable_file(tmp_path: Path) -> None:
    project(tmp_path, {"package-lock.json": "{}"})
    path = write_starter(tmp_path)
    assert path == tmp_path / ".forgeci.toml"
    text = path.read_text()
    assert text.startswith("# forgeci pipeline, written by `forgeci init` (detected: node).")
    assert text.count("[[jobs.test.steps]]") == 1
    assert [(s.name, s.run) for s in parse_pipeline(text, str(path)).jobs["test"].steps] == [("install", "npm ci")]


def test_write_starter_keeps_an_existing_file_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / ".forgeci.toml"
    path.write_text("# mine\n")
    with pytest.raises(ConfigError) as exc:
        write_starter(tmp_path)
    (issue,) = exc.value.issues
    assert (issue.source, issue.message) == (str(path), "already exists; use --force to overwrite it")
    assert path.read_text() == "# mine\n"
    project(tmp_path, {"Cargo.lock": ""})
    write_starter(tmp_path, force=True)
    assert "cargo test --locked" in path.read_text()


def test_odd_types_in_the_manifests_are_read_as_absent(tmp_path: Path) -> None:
    project(tmp_path, {"pyproject.toml": 'tool = 1\nproject = "x"\ndependency-groups = []\n',
                       "package.json": {"scripts": ["test"], "packageManager": 7}})
    pipeline, _ = written(tmp_path)
    assert steps(pipeline, "node") == [("install", "npm install")]
    assert steps(pipeline, "python") == [("install", "python3 -m venv .venv"),
                                         ("test", ".venv/bin/python -m unittest")]
    project(tmp_path, {"pyproject.toml": '[project]\nname = "d"\ndependencies = "pytest"\n'
                                         '[project.optional-dependencies]\ntest = 3\n[dependency-groups]\n'
                                         'test = [{include-group = "test"}, 4]\n'})
    assert starter_pipeline(tmp_path)["jobs"]["python"]["steps"][1]["run"] == ".venv/bin/python -m unittest"
