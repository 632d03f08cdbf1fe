"""The inputs a repository's ref declares (`GET /inputs`), for the submit forms, and `KEY=VALUE` text parsed."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from client.api import Client
from client.errors import BadResponse


@dataclass(frozen=True)
class DeclaredInput:
    key: str
    description: str
    default: str | None
    choices: tuple[str, ...]
    required: bool


@dataclass(frozen=True)
class Declared:
    """`known` False: no pipeline of that ref was planned from its file yet (the form offers plain key=value)."""

    known: bool
    inputs: tuple[DeclaredInput, ...]

    @classmethod
    def from_dict(cls, d: Any) -> Declared:
        if not isinstance(d, dict) or not isinstance(d.get("inputs"), dict):
            raise BadResponse("unexpected answer from the server: no inputs")
        found = []
        for key, spec in d["inputs"].items():
            spec = spec if isinstance(spec, dict) else {}
            choices = spec.get("choices") if isinstance(spec.get("choices"), list) else []
            default = spec.get("default")
            found.append(DeclaredInput(str(key), str(spec.get("description") or ""),
                                       default if isinstance(default, str) else None,
                                       tuple(str(c) for c in choices), spec.get("required") is True))
        return cls(d.get("known") is True, tuple(found))


async def declared_inputs(client: Client, repo: str, ref: str) -> Declared:
    return Declared.from_dict(await client.request("GET", "/inputs", params={"repo": repo, "ref": ref}))


def parse_pairs(text: str) -> dict[str, str]:
    """`KEY=VALUE KEY2="two words"` (shell quoting) as inputs; ValueError saying what is wrong."""
    found: dict[str, str] = {}
    for pair in shlex.split(text):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        found[key] = value
    return found
