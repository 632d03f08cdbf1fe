"""The import rules of the client side: `client` stands alone on `config`; `tui` uses only `client`, never its app."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function, TYPE_CHECKING blocks included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def top(name: str) -> str:
    return name.split(".", 1)[0]


@pytest.mark.parametrize("path", sorted((ROOT / "client").glob("*.py")), ids=lambda p: p.name)
def test_client_imports_neither_the_server_nor_the_console(path: Path) -> None:
    assert not {n for n in imported(path) if top(n) in ("bot", "runner", "tui")}


@pytest.mark.parametrize("path", sorted((ROOT / "tui").glob("*.py")), ids=lambda p: p.name)
def test_the_console_talks_to_the_server_only_through_client_and_nothing_imports_its_app(path: Path) -> None:
    names = imported(path)
    assert not {n for n in names if top(n) in ("bot", "runner")}
    assert not {n for n in names if n == "tui.app" or n.startswith("tui.app.")}
