"""`forgeci init` for Python: a venv, the project installed editable with the test dependencies it declares, and
pytest when the project configures or depends on it, else unittest."""

from __future__ import annotations

import configparser
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

from config.detect import DetectedJob
from config.toolchains import toolchain

TEST_NAMES = ("test", "tests", "testing", "dev")  # extras and dependency groups that hold test dependencies
_VENV = "python3 -m venv .venv"
_PIP = ".venv/bin/pip install"
_PYTHON = ".venv/bin/python"
_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _toml(path: Path) -> dict[str, Any] | None:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _ini(path: Path) -> configparser.ConfigParser | None:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(path.read_text(encoding="utf-8"), str(path))
    except (OSError, configparser.Error, UnicodeDecodeError):
        return None
    return parser


def _names(requirements: list[str]) -> set[str]:
    """The distribution names in requirement strings (`pytest>=7; python_version>'3'` -> pytest), lowercased."""
    return {m.group(1).lower().replace("_", "-") for r in requirements if (m := _REQ_NAME.match(r))}


def requirement_files(root: Path) -> list[str]:
    """requirements.txt, and the test/dev ones: requirements-dev.txt, requirements_test.txt, requirements/test*.txt."""
    found = ["requirements.txt"] if (root / "requirements.txt").is_file() else []
    for path in sorted(root.glob("requirements[-_]*.txt")) + sorted(root.glob("requirements/*.txt")):
        stem = path.stem.removeprefix("requirements").lstrip("-_")
        if path.is_file() and stem.lower().startswith(TEST_NAMES):
            found.append(path.relative_to(root).as_posix())
    return found


def _group(groups: dict[str, Any], name: str, seen: frozenset[str] = frozenset()) -> list[str]:
    """A PEP 735 dependency group's requirement strings, its include-groups followed."""
    out: list[str] = []
    for item in groups.get(name, []) if isinstance(groups.get(name), list) else []:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict) and isinstance(include := item.get("include-group"), str) and include not in seen:
            out += _group(groups, include, seen | {name})
    return out


class _Found:
    """What the Python files say, gathered as they are read."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.why: list[str] = []
        self.installable = False
        self.extras: list[str] = []
        self.group_reqs: list[str] = []  # requirement strings of test dependency groups, installed by name
        self.deps: list[str] = []  # every requirement string seen, for "does it depend on pytest"
        self.pytest_config: str | None = None

    def pyproject(self) -> None:
        data = _toml(self.root / "pyproject.toml")
        if data is None:
            self.why.append("pyproject.toml does not parse: read as if it were empty")
            return
        project = _table(data, "project")
        tool = _table(data, "tool")
        if project or "build-system" in data or "poetry" in tool:
            self.installable = True
            self.why.append("pyproject.toml: " + ("[project]" if project else "[build-system]")
                            + " -> pip install -e .")
        dependencies = project.get("dependencies")
        self.deps += [d for d in dependencies if isinstance(d, str)] if isinstance(dependencies, list) else []
        self._extras(_table(project, "optional-dependencies"), "optional-dependencies")
        groups = _table(data, "dependency-groups")
        for name in TEST_NAMES:
            if name in groups:
                reqs = _group(groups, name)
                self.group_reqs += reqs
                self.deps += reqs
                self.why.append(f"pyproject.toml: dependency group {name!r}")
        if isinstance(tool.get("pytest"), dict):
            self.pytest_config = "[tool.pytest] in pyproject.toml"

    def _extras(self, extras: dict[str, Any], where: str) -> None:
        for name in TEST_NAMES:
            reqs = extras.get(name)
            if isinstance(reqs, str):
                reqs = reqs.splitlines()
            if isinstance(reqs, list):
                self.extras.append(name)
                self.deps += [r for r in reqs if isinstance(r, str)]
                self.why.append(f"{where}: extra {name!r}")

    def setup_cfg(self) -> None:
        cfg = _ini(self.root / "setup.cfg")
        if cfg is None:
            return
        if cfg.has_section("metadata") or cfg.has_section("options"):
            if not self.installable:
                self.why.append("setup.cfg: [metadata] -> pip install -e .")
            self.installable = True
        if cfg.has_section("options.extras_require"):
            self._extras(dict(cfg.items("options.extras_require")), "setup.cfg")
        if cfg.has_section("tool:pytest"):
            self.pytest_config = self.pytest_config or "[tool:pytest] in setup.cfg"

    def tox_ini(self) -> None:
        cfg = _ini(self.root / "tox.ini")
        if cfg is None:
            return
        if cfg.has_section("pytest"):
            self.pytest_config = self.pytest_config or "[pytest] in tox.ini"
        for section in cfg.sections():
            if section == "testenv" or section.startswith("testenv:"):
                # tox's deps are tox's to install: naming pytest there says the project tests with it.
                deps = cfg.get(section, "deps", fallback="").splitlines()
                commands = cfg.get(section, "commands", fallback="")
                if re.search(r"\bpytest\b|\bpy\.test\b", commands) or "pytest" in _names(deps):
                    self.pytest_config = self.pytest_config or "tox.ini tests with it"

    def requirements(self, files: list[str]) -> None:
        """The requirements in these files, and in those they include (`-r other.txt`)."""
        todo, seen = [self.root / name for name in files], set[Path]()
        while todo and len(seen) < 50:
            path = todo.pop()
            if path in seen:
                continue
            seen.add(path)
            try:
                lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                continue
            for line in (line.strip() for line in lines):
                include = re.match(r"(?:-r|--requirement)[\s=]+(\S+)", line)
                if include:
                    todo.append(path.parent / include.group(1))
                elif not line.startswith(("#", "-")):
                    self.deps.append(line)


MARKERS = ("pyproject.toml", "setup.cfg", "setup.py", "tox.ini")


def _pytest_files(root: Path) -> str | None:
    for name in ("pytest.ini", "conftest.py", "tests/conftest.py", "test/conftest.py"):
        if (root / name).is_file():
            return name
    return None


def _unittest(root: Path) -> str:
    for folder in ("tests", "test"):
        if (root / folder).is_dir():
            top = " -t ." if (root / folder / "__init__.py").is_file() else ""
            return f"{_PYTHON} -m unittest discover -s {folder}{top}"
    return f"{_PYTHON} -m unittest"


def _locked(root: Path) -> DetectedJob | None:
    """uv and Poetry projects: their lockfile says what to install, and they test with pytest."""
    test = f"{_PYTHON} -m pytest"
    if (root / "uv.lock").is_file():
        # --inexact keeps uv itself, which lives in the same venv.
        install = f"{_VENV} && {_PIP} uv && .venv/bin/uv sync --frozen --inexact"
        return DetectedJob("python", "test", ("Python (uv): uv.lock",), (("install", install), ("test", test)),
                           toolchain("uv"), ("uv.lock",))
    if (root / "poetry.lock").is_file():
        # Poetry installs into the active venv, so the project stays in .venv where the cache expects it.
        install = f"{_VENV} && . .venv/bin/activate && pip install poetry && poetry install --no-interaction"
        return DetectedJob("python", "test", ("Python (Poetry): poetry.lock",), (("install", install), ("test", test)),
                           toolchain("pip"), ("poetry.lock",))
    return None


def detect_python(root: Path) -> list[DetectedJob]:
    locked = _locked(root)
    if locked is not None:
        return [locked]
    files = requirement_files(root)
    others = sorted(p.name for p in root.glob("requirements*.txt") if p.is_file() and p.name not in files)
    markers = [n for n in MARKERS if (root / n).is_file()]
    if not markers and not files and not others:
        return []
    if not files:  # only requirements-docs.txt and the like: the old rule, install them all
        files, others = others, []
    found = _Found(root)
    found.why.append(f"Python: {', '.join(markers + files)}")
    if (root / "pyproject.toml").is_file():
        found.pyproject()
    if (root / "setup.py").is_file() and not found.installable:
        found.installable = True
        found.why.append("setup.py -> pip install -e .")
    if (root / "setup.cfg").is_file():
        found.setup_cfg()
    if (root / "tox.ini").is_file():
        found.tox_ini()
    found.requirements(files)
    if files:
        found.why.append(f"requirements files: {', '.join(files)}"
                         + (f" (not {', '.join(others)})" if others else ""))
    return [_job(root, found, files)]


def _job(root: Path, found: _Found, files: list[str]) -> DetectedJob:
    """The install and test steps from what was found."""
    parts = [f"-r {shlex.quote(name)}" for name in files]
    if found.installable:
        target = f".[{','.join(found.extras)}]" if found.extras else "."
        parts.append(f"-e {shlex.quote(target)}")
    extra = list(dict.fromkeys(found.group_reqs))
    pytest_config = found.pytest_config or _pytest_files(root)
    depends = "pytest" in _names(found.deps)
    if pytest_config and not depends:
        extra.append("pytest")
    parts += [shlex.quote(r) for r in extra]
    if depends:
        found.why.append("tests: pytest (a test dependency)")
    elif pytest_config:
        found.why.append(f"tests: pytest ({pytest_config}; installed, as nothing here depends on it)")
    else:
        found.why.append("tests: unittest (no pytest configured or depended on)")
    install = _VENV + (f" && {_PIP} {' '.join(parts)}" if parts else "")
    test = f"{_PYTHON} -m pytest" if depends or pytest_config else _unittest(root)
    keys = tuple(n for n in (*MARKERS, *files) if (root / n).is_file())
    return DetectedJob("python", "test", tuple(found.why), (("install", install), ("test", test)), toolchain("pip"),
                       keys)
