"""Inputs of a manual run: what a pipeline declares (`[inputs.KEY]`), what a submission gives, the INPUT_<KEY>
variables its jobs see."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from config.errors import ConfigError, ConfigIssue
from config.schema import (
    BOOL, ENV_NAME, INVALID, STRING, Issues, Kind, decode, describe, encode, key_path, option, string_list,
)

META: Final = "inputs"  # the key of a pipeline's meta holding the given inputs, as JSON
MAX_INPUTS: Final = 100
MAX_VALUE: Final = 8192  # characters of one value: it becomes an environment variable
INPUTS_DOC: Final = ("inputs of a manual run (`forgeci submit --input KEY=VALUE`, the API's `inputs`); jobs see "
                     "`INPUT_<KEY>` (upper case); other events get the defaults")


@dataclass(frozen=True, kw_only=True)
class InputSpec:
    """One [inputs.KEY] table."""

    description: str = option(STRING, "what the input is for, shown by the submit forms", "")
    default: str | None = option(STRING, "its value when a run does not give one", None, shown="none")
    choices: tuple[str, ...] = option(string_list(), "the values it may take; empty = any", ())
    required: bool = option(BOOL, "a manual run must give it (or it has a default)", False)


def variable(key: str) -> str:
    """The environment variable of input `key`."""
    return f"INPUT_{key.upper()}"


def _convert(value: object, path: str, issues: Issues) -> object:
    if not isinstance(value, dict):
        issues.add(path, f"expected [inputs.KEY] tables, got {describe(value)}")
        return INVALID
    before = issues.count
    found: dict[str, InputSpec] = {}
    variables: dict[str, str] = {}
    for key, item in value.items():
        where = key_path(path, str(key))
        if not isinstance(key, str) or not ENV_NAME.fullmatch(key):
            issues.add(path, f"expected input names like LOG_LEVEL, got {describe(key)}")
            continue
        if variable(key) in variables:
            issues.add(where, f"{variables[variable(key)]!r} and {key!r} are the same variable {variable(key)}")
        variables.setdefault(variable(key), key)
        spec = decode(InputSpec, item, where, issues)
        if spec is INVALID:
            continue
        if spec.default is not None and spec.choices and spec.default not in spec.choices:
            issues.add(f"{where}.default", f"expected one of its choices, got {describe(spec.default)}")
        found[key] = spec
    if len(value) > MAX_INPUTS:
        issues.add(path, f"at most {MAX_INPUTS} inputs, got {len(value)}")
    return found if issues.count == before else INVALID


INPUTS: Final = Kind("table of tables", _convert, lambda found: {k: encode(v) for k, v in found.items()},
                     InputSpec, ".<NAME>.")


def given_inputs(value: object, source: str = "request") -> dict[str, str]:
    """The inputs a submission gives (`{"KEY": "value"}`); ConfigError naming the first bad one."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(ConfigIssue(source, META, f"expected an object of strings, got {describe(value)}"))
    if len(value) > MAX_INPUTS:
        raise ConfigError(ConfigIssue(source, META, f"at most {MAX_INPUTS} inputs, got {len(value)}"))
    for key, item in value.items():
        if not isinstance(key, str) or not ENV_NAME.fullmatch(key):
            raise ConfigError(ConfigIssue(source, META, f"expected input names like LOG_LEVEL, got {describe(key)}"))
        if not isinstance(item, str) or "\x00" in item or len(item) > MAX_VALUE:
            raise ConfigError(ConfigIssue(source, key_path(META, key),
                                          f"expected a string of at most {MAX_VALUE} characters, got {describe(item)}"))
    return dict(value)


def to_meta(given: Mapping[str, str]) -> str:
    return json.dumps(dict(given), sort_keys=True, separators=(",", ":"))


def from_meta(meta: Mapping[str, str]) -> dict[str, str]:
    """The inputs a pipeline's meta holds ({} when none, or unreadable: meta is only ever written by to_meta)."""
    try:
        found = json.loads(meta.get(META) or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def resolve(declared: Mapping[str, InputSpec], given: Mapping[str, str], *, manual: bool) -> dict[str, str]:
    """The INPUT_<KEY> variables of a run: the given values over the declared defaults.

    A manual run is checked (ConfigError naming every bad input: unknown when the pipeline declares inputs,
    missing and required, outside its `choices`); another event's pipeline just uses the defaults.
    """
    issues = Issues("inputs")
    if manual:
        for key in given:
            if declared and key not in declared:
                issues.add(key_path(META, key), f"unknown input (the pipeline declares {', '.join(declared)})")
        for key, spec in declared.items():
            value = given.get(key, spec.default)
            if value is None and spec.required:
                issues.add(key_path(META, key), "required input missing")
            elif value is not None and spec.choices and value not in spec.choices:
                shown = ", ".join(repr(c) for c in spec.choices)
                issues.add(key_path(META, key), f"expected one of {shown}, got {describe(value)}")
        issues.raise_if_any()
    values = {key: spec.default for key, spec in declared.items() if spec.default is not None}
    values.update(given if manual else {})
    return {variable(key): value for key, value in values.items()}
