"""Matrix builds of a [jobs.NAME] table: matrix values, expansion into members, display names, ${{ matrix.KEY }}."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Final, TypeAlias

from config.schema import INVALID, Issues, Kind, as_text, describe, key_path

Value: TypeAlias = str | int | bool  # what a matrix value may be: TOML's scalars minus floats and dates
Values: TypeAlias = dict[str, Value]  # one member's values, ordered as they are displayed

MAX_MEMBERS: Final = 256  # like GitHub Actions: more is a mistake, and each member is a job of its own
# Combinations before matrix_exclude, for one job and for all jobs of a pipeline together: past it, expansion is
# refused rather than tried (it costs up to MAX_COMBINATIONS x MAX_EXCLUDES lookups, about half a second).
MAX_COMBINATIONS: Final = 4096
MAX_EXCLUDES: Final = 256  # bounds the matching work (combinations x entries)
NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")  # job names and matrix keys, like GitHub job ids
NAME_RULE: Final = 'letters, digits, "-" and "_", starting with a letter or "_"'
EXPRESSION: Final = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)
_MATRIX_REF: Final = re.compile(r"\s*matrix\.([A-Za-z_][A-Za-z0-9_-]*)\s*")
_VALUES_LABEL: Final = "strings, integers or booleans"


def env_name(text: str) -> str:
    """`text` as the tail of an environment variable name: upper case, every non-alphanumeric as `_`."""
    return re.sub(r"[^A-Za-z0-9]", "_", text).upper()


def matrix_var(key: str) -> str:
    """The variable holding matrix value `key` in a member's environment: `MATRIX_PYTHON`."""
    return f"MATRIX_{env_name(key)}"


def needs_var(job: str, key: str) -> str:
    """The variable through which dependants see output `key` of job `job`: `NEEDS_BUILD_VERSION`."""
    return f"NEEDS_{env_name(job)}_{env_name(key)}"


def value_text(value: Value) -> str:
    """A matrix value as TOML writes it, without quotes: how it is shown and substituted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def quoted(text: str) -> str:
    """`text` in double quotes, for messages that name jobs, keys and members."""
    return json.dumps(text, ensure_ascii=False)


def display_name(job: str, values: Mapping[str, Value] | None) -> str:
    """`test (python=3.12, db=sqlite)`; a job without a matrix (None) is shown as its name."""
    if values is None:
        return job
    return f"{job} (" + ", ".join(f"{k}={value_text(v)}" for k, v in values.items()) + ")"


def _value(value: object, path: str, issues: Issues) -> object:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) >= 10**18:  # also keeps str() away from Python's limit on huge integers
            issues.add(path, f"expected an integer of at most 18 digits, got {describe(value)}")
            return INVALID
        return value
    if isinstance(value, float):
        # 3.10 as a float is 3.1: a version written without quotes would silently run the wrong build.
        issues.add(path, f"expected a string, integer or boolean, got {describe(value)} "
                         f'(write "{value}" in quotes to keep it as written)')
        return INVALID
    try:
        return as_text(value, "a string, integer or boolean")
    except ValueError as exc:
        issues.add(path, str(exc))
        return INVALID


def _key(key: object, path: str, issues: Issues) -> bool:
    if isinstance(key, str) and NAME.fullmatch(key):
        return True
    issues.add(path, f"expected matrix keys of {NAME_RULE}, got {describe(key)}")
    return False


def _convert_matrix(value: object, path: str, issues: Issues) -> object:
    if not isinstance(value, dict) or not value:
        issues.add(path, 'expected a table of axes like { python = ["3.11", "3.12"] }, '
                         f"got {describe(value)}")
        return INVALID
    before = issues.count
    out: dict[str, tuple[Value, ...]] = {}
    mangled: dict[str, str] = {}
    for key, items in value.items():
        if not _key(key, path, issues):
            continue
        where = key_path(path, key)
        if env_name(key) in mangled:
            issues.add(where, f"{quoted(mangled[env_name(key)])} and {quoted(key)} would both be "
                              f"{matrix_var(key)}")
        mangled.setdefault(env_name(key), key)
        if not isinstance(items, (list, tuple)) or not items:
            issues.add(where, f"expected a non-empty array of {_VALUES_LABEL}, got {describe(items)}")
            continue
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            found = _value(item, f"{where}[{i}]", issues)
            if found is INVALID:
                continue
            text = value_text(found)  # type: ignore[arg-type]
            if text in seen:  # values are told apart as they are shown: 3 and "3" are one member
                issues.add(f"{where}[{i}]", f"duplicate value {quoted(text)} (also {key}[{seen[text]}])")
            seen.setdefault(text, i)
        out[key] = tuple(items)
    return out if issues.count == before else INVALID


def _convert_entries(value: object, path: str, issues: Issues) -> object:
    if not isinstance(value, (list, tuple)):
        issues.add(path, f'expected an array of tables like {{ python = "3.11" }}, got {describe(value)}')
        return INVALID
    before = issues.count
    out: list[Values] = []
    for i, entry in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(entry, dict) or not entry:
            issues.add(where, f'expected a table of matrix values like {{ python = "3.11" }}, got {describe(entry)}')
            continue
        values: Values = {}
        for key, item in entry.items():
            if _key(key, where, issues):
                found = _value(item, key_path(where, key), issues)
                if found is not INVALID:
                    values[key] = found  # type: ignore[assignment]
        out.append(values)
    return tuple(out) if issues.count == before else INVALID


MATRIX: Final = Kind("table of arrays", _convert_matrix, lambda m: {k: list(v) for k, v in m.items()})
ENTRIES: Final = Kind("array of tables", _convert_entries, lambda entries: [dict(e) for e in entries])


def check_entries(matrix: Mapping[str, Sequence[Value]] | None, exclude: Sequence[Mapping[str, Value]],
                  include: Sequence[Mapping[str, Value]], path: str, issues: Issues) -> None:
    """Excludes and includes may only name the matrix's keys; an exclude's values must be the matrix's values."""
    keys = ", ".join(matrix or {})
    if exclude and matrix is None:
        issues.add(f"{path}.matrix_exclude", "there is no matrix to exclude from")
    elif len(exclude) > MAX_EXCLUDES:
        issues.add(f"{path}.matrix_exclude", f"expected at most {MAX_EXCLUDES} entries, got {len(exclude)}")
    for i, entry in enumerate(exclude if matrix is not None else ()):
        for key, value in entry.items():
            where = key_path(f"{path}.matrix_exclude[{i}]", key)
            texts = [value_text(v) for v in matrix.get(key, ())]
            if key not in matrix:
                issues.add(where, f"unknown matrix key (matrix keys: {keys})")
            elif value_text(value) not in texts:  # would match nothing: most likely a typo
                issues.add(where, f"{quoted(value_text(value))} is not a value of matrix.{key} "
                                  f"(values: {', '.join(texts)})")
    for i, entry in enumerate(include if matrix is not None else ()):
        for key in entry:
            if key not in matrix:
                issues.add(key_path(f"{path}.matrix_include[{i}]", key),
                           f"unknown matrix key (an include may only use the matrix's keys: {keys})")


def combinations(matrix: Mapping[str, Sequence[Value]] | None, include: Sequence[Mapping[str, Value]]) -> int:
    """How many combinations expanding a matrix examines: the product of its axes, plus its includes."""
    return (math.prod(len(v) for v in matrix.values()) if matrix else 0) + len(include)


def _ordered(values: Mapping[str, Value], axes: Sequence[str]) -> Values:
    """Axis keys in the file's order, then an include's other keys (possible only without `matrix`)."""
    return {**{k: values[k] for k in axes if k in values}, **{k: v for k, v in values.items() if k not in axes}}


def expand_matrix(job: str, matrix: Mapping[str, Sequence[Value]] | None, exclude: Sequence[Mapping[str, Value]],
                  include: Sequence[Mapping[str, Value]], path: str, issues: Issues) -> list[Values] | None:
    """The members of job `job` at `path` (`jobs.test`): the product minus excludes, plus every include.

    An include is always an extra member (GitHub's merging of includes into matching members is not done).
    None when the job has no matrix; [] (with issues) when the matrix cannot be expanded.
    """
    if matrix is None and not include:
        return None
    axes = list(matrix or {})
    size = combinations(matrix, include)
    if size > MAX_COMBINATIONS:
        issues.add(f"{path}.matrix" if matrix else f"{path}.matrix_include",
                   f"makes {size} combinations (its axes' product, plus includes); at most {MAX_COMBINATIONS} "
                   f"can be expanded, and at most {MAX_MEMBERS} members run")
        return []
    # Excludes grouped by the axes they name, so each combination costs one set lookup per group.
    groups: dict[tuple[int, ...], set[tuple[str, ...]]] = {}
    for entry in exclude:
        positions = tuple(sorted(axes.index(k) for k in entry))
        groups.setdefault(positions, set()).add(tuple(value_text(entry[axes[p]]) for p in positions))
    members: list[Values] = []
    made: dict[str, str] = {}  # display name -> what made it, for duplicate messages
    for combination in (itertools.product(*matrix.values()) if matrix else ()):
        texts = [value_text(v) for v in combination]
        if any(tuple(texts[p] for p in positions) in found for positions, found in groups.items()):
            continue
        members.append(dict(zip(axes, combination)))
        made[display_name(job, members[-1])] = "the matrix"
    for i, entry in enumerate(include):
        values = _ordered(entry, axes)
        shown = display_name(job, values)
        if shown in made:
            issues.add(f"{path}.matrix_include[{i}]", f"duplicate member {quoted(shown)} (also made by {made[shown]})")
        made.setdefault(shown, f"matrix_include[{i}]")
        members.append(values)
    if not members:
        issues.add(f"{path}.matrix", "expands to no members: matrix_exclude removes every combination")
    elif len(members) > MAX_MEMBERS:
        where = f"{path}.matrix" if matrix else f"{path}.matrix_include"
        issues.add(where, f"expands to {len(members)} members; at most {MAX_MEMBERS} are allowed")
    return members


def references(text: str) -> tuple[list[str], list[str]]:
    """The matrix keys `text` refers to, and what is wrong with its other `${{ ... }}` (or an unclosed one)."""
    keys, problems = [], []
    for match in EXPRESSION.finditer(text):
        ref = _MATRIX_REF.fullmatch(match[1])
        if ref is None:
            shown = match[0] if len(match[0]) <= 60 else match[0][:57] + "..."
            problems.append(f"only ${{{{ matrix.KEY }}}} is supported, got {shown}")
        else:
            keys.append(ref[1])
    if "${{" in EXPRESSION.sub("", text):
        problems.append("unclosed ${{ (expected ${{ matrix.KEY }})")
    return keys, problems


def substitute(text: str, values: Mapping[str, Value]) -> str:
    """`text` with every `${{ matrix.KEY }}` replaced; `references` has vouched for every key."""
    return EXPRESSION.sub(lambda m: value_text(values[_MATRIX_REF.fullmatch(m[1])[1]]), text)  # type: ignore[index]
