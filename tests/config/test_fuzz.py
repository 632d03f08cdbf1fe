"""Whatever the input, the parsers raise ConfigError and nothing else."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.check import check_file
from config.errors import ConfigError
from config.pipeline import parse_pipeline, pipeline_from_dict
from config.schema import MAX_FILE_BYTES
from config.settings import parse_settings

PARSERS: list[Callable[[Any, str], object]] = [parse_settings, parse_pipeline]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Real keys mixed with noise, so generated documents reach deep into the schema and not only "unknown key".
_KEYS = st.sampled_from([
    "steps", "run", "name", "timeout", "env", "cache", "paths", "save", "branches", "snapshot", "secrets",
    "image", "continue_on_error", "key_files", "server", "port", "queue", "runner", "ulimits", "data_dir",
    "github", "app_id", "storage", "url", "NPM_TOKEN", "repos", "step_timeout",
    "jobs", "needs", "if", "matrix", "matrix_exclude", "matrix_include", "fail_fast", "max_parallel", "a", "b",
]) | st.text(max_size=8)
_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
            | st.sampled_from(["5m", "0s", "always", "success", "main", "", "refs/tags/*", "/abs", "../up", "a", "b",
                               "${{ matrix.a }}", "${{ x }}", "${{"]))
_TOML_SCALARS = (st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
                 | st.text(max_size=12) | st.sampled_from(["5m", "0s", "always", "success", "main", ""]))


def _tree(leaves: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=5),
                        max_leaves=30)


def _only_config_errors(parse: Callable[[Any, str], object], data: object) -> None:
    try:
        parse(data, "fuzz")
    except ConfigError as exc:
        assert exc.issues, "a ConfigError must carry at least one issue"
        assert all(isinstance(i.message, str) and i.message for i in exc.issues)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    for parse in PARSERS:
        _only_config_errors(parse, data)


@FUZZ
@given(st.text(alphabet='[]{}="\'.,#\n =abc0123456789_-:tfrueals', max_size=200))
def test_toml_like_text(text: str) -> None:
    for parse in PARSERS:
        _only_config_errors(parse, text)


@FUZZ
@given(st.dictionaries(_KEYS, _tree(_TOML_SCALARS), max_size=6))
def test_random_documents_rendered_with_tomli_w(doc: dict[str, object]) -> None:
    try:
        text = tomli_w.dumps(doc)
    except (TypeError, ValueError):
        return  # not every generated tree is representable in TOML
    for parse in PARSERS:
        _only_config_errors(parse, text)


@FUZZ
@given(_tree(_SCALARS))
def test_random_objects_as_a_json_submission(obj: object) -> None:
    _only_config_errors(pipeline_from_dict, obj)
    _only_config_errors(pipeline_from_dict, {"steps": obj})
    _only_config_errors(pipeline_from_dict, {"steps": [{"run": "x", "env": obj, "timeout": obj}]})


@FUZZ
@given(st.sampled_from(["image", "timeout", "branches", "snapshot", "secrets", "env", "cache"]), _tree(_SCALARS))
def test_each_pipeline_key_with_any_value(key: str, value: object) -> None:
    _only_config_errors(pipeline_from_dict, {key: value, "steps": [{"run": "x"}]})


_JOB_KEYS = ["needs", "if", "matrix", "matrix_exclude", "matrix_include", "fail_fast", "max_parallel",
             "continue_on_error", "image", "timeout", "branches", "snapshot", "secrets", "env", "cache", "steps"]


@FUZZ
@given(st.sampled_from(_JOB_KEYS), _tree(_SCALARS), _tree(_SCALARS))
def test_each_job_key_with_any_value(key: str, value: object, other: object) -> None:
    job = {"matrix": {"a": ["1", 2, True]}, "steps": [{"run": "${{ matrix.a }}"}], key: value}
    _only_config_errors(pipeline_from_dict, {"jobs": {"a": job, "b": {"needs": other, "steps": [{"run": "x"}]}}})
    _only_config_errors(pipeline_from_dict, {"env": {"A": value}, "jobs": {"a": {key: other, "steps": [{"run": "x"}]}}})


@pytest.mark.parametrize(
    "text",
    [
        "a=" + "[" * 100_000,
        "a=" + "{b=" * 100_000,
        "steps=" + "[" * 100_000,
        "[[steps]]\nrun=" + "[" * 50_000 + "]" * 50_000,
        "a" + ".a" * 100_000 + "=1",
        "[" + "a." * 100_000 + "a]",
        "a=" + "9" * 5000,
        "a=" + "[" * 400 + "]" * 400,
        "[[steps]]\nrun = \"x\"\nenv = " + "{a=" * 200 + "1" + "}" * 200,
    ],
    ids=["deep-arrays", "deep-inline-tables", "deep-steps", "balanced-50k", "dotted-100k", "header-100k",
         "huge-int", "deep-400-valid", "deep-env"],
)
def test_pathological_documents(text: str) -> None:
    for parse in PARSERS:
        with pytest.raises(ConfigError):
            parse(text, "fuzz")


def test_deeply_nested_objects_in_a_submission() -> None:
    deep: object = "x"
    for _ in range(100_000):
        deep = [deep] if isinstance(deep, (str, dict)) else {"steps": deep}
    for obj in (deep, {"steps": deep}, {"env": deep, "steps": [{"run": "x"}]}):
        with pytest.raises(ConfigError):
            pipeline_from_dict(obj, "api")
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ConfigError):
        pipeline_from_dict({"steps": loop}, "api")


def test_huge_input_is_refused_without_parsing() -> None:
    text = '[[steps]]\nrun = "' + "x" * (MAX_FILE_BYTES + 1) + '"\n'
    for parse in PARSERS:
        with pytest.raises(ConfigError, match="file too large"):
            parse(text, "fuzz")


def test_many_unknown_keys_are_capped() -> None:
    text = "".join(f"key{i} = {i}\n" for i in range(5000))
    with pytest.raises(ConfigError) as exc:
        parse_settings(text, "fuzz")
    assert len(exc.value.issues) == 51
    assert exc.value.issues[-1].message == "... and 4950 more issues"


@pytest.mark.parametrize("data", [b"\x00\x01", b"\xff\xfe[server]", "\ud800".encode("utf-8", "surrogatepass")])
def test_check_file_on_binary_garbage(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / ".forgeci.toml"
    path.write_bytes(data)
    assert check_file(path)
    (tmp_path / "forgeci.toml").write_bytes(data)
    assert check_file(tmp_path / "forgeci.toml")


def test_strings_that_are_not_unicode_text() -> None:
    with pytest.raises(ConfigError, match="cannot read as TOML text"):
        parse_pipeline('[[steps]]\nrun = "\ud800"\n', "fuzz")
    with pytest.raises(ConfigError) as exc:
        pipeline_from_dict({"steps": [{"run": "a\ud800", "name": "n\x00"}]}, "api")
    assert {i.path for i in exc.value.issues} == {"steps[0].run", "steps[0].name"}


def test_dotted_keys_cannot_exhaust_memory() -> None:
    # 800 kB that would make tomllib allocate ~1.7 GB: refused before parsing.
    text = "".join(f"k{i}" + ".a" * 1000 + "=1\n" for i in range(400))
    for parse in PARSERS:
        with pytest.raises(ConfigError, match="too many dotted keys"):
            parse(text, "fuzz")


def test_ordinary_dotted_keys_are_fine() -> None:
    text = "[[steps]]\nrun = 'x'\n" + "".join(f'env.V{i} = "a.b.c.d.e"\n' for i in range(20_000))
    assert len(parse_pipeline(text, "fuzz").steps[0].env) == 20_000
