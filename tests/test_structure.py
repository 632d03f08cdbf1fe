"""The layout's standing rules: small modules and functions, and each package's allowed imports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "runner", "tui", "config", "client")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
DATA_LITERALS = {("bot/openapi.py", "openapi_document")}  # one literal: the API's OpenAPI document


def modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py")) + [ROOT / "forgeci_cli.py"]


def test_no_module_is_over_500_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_no_function_is_over_80_lines() -> None:
    long = {}
    for path in modules():
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (rel, node.name) not in DATA_LITERALS:
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{rel}:{node.lineno} {node.name}"] = length
    assert long == {}


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
    return found


def test_packages_import_only_what_the_layout_allows() -> None:
    allowed = {"config": set(), "runner": {"config"}, "client": {"config"}, "tui": {"config", "client"},
               "bot": {"config", "runner"}}
    wrong = {}
    for package, may in allowed.items():
        for path in (ROOT / package).rglob("*.py"):
            bad = (imports_of(path) & set(PACKAGES)) - may - {package}
            if bad:
                wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert wrong == {}
