"""[inputs.KEY] in the pipeline file, and how a run's given inputs resolve against them."""

from __future__ import annotations

import pytest

from config.errors import ConfigError
from config.inputs import from_meta, given_inputs, resolve, to_meta
from config.pipeline import parse_pipeline, pipeline_from_dict, pipeline_to_dict

FILE = '''
[inputs.target]
choices = ["staging", "prod"]
default = "staging"
[inputs.dry_run]
required = true
[[steps]]
run = "deploy"
'''


def test_declared_inputs_read_and_write_back() -> None:
    pipeline = parse_pipeline(FILE, ".forgeci.toml")
    assert pipeline.inputs["target"].choices == ("staging", "prod") and pipeline.inputs["dry_run"].required
    assert pipeline_from_dict(pipeline_to_dict(pipeline), "again") == pipeline


@pytest.mark.parametrize(("text", "message"), [
    ('[inputs.a]\nchoices = ["x"]\ndefault = "y"\n', "inputs.a.default: expected one of its choices, got 'y'"),
    ('[inputs.a]\nrequird = true\n', "inputs.a.requird: unknown key (did you mean 'required'?)"),
    ('[inputs.a]\n[inputs.A]\n', "inputs.A: 'a' and 'A' are the same variable INPUT_A"),
    ('[inputs."a b"]\n', "inputs: expected input names like LOG_LEVEL, got 'a b'"),
])
def test_bad_declarations_name_their_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_pipeline(text + '[[steps]]\nrun = "x"\n', ".forgeci.toml")
    assert f".forgeci.toml: {message}" in str(caught.value)


def test_a_manual_run_is_checked_and_other_events_take_the_defaults() -> None:
    declared = parse_pipeline(FILE, "f").inputs
    assert resolve(declared, {"dry_run": "1"}, manual=True) == {"INPUT_TARGET": "staging", "INPUT_DRY_RUN": "1"}
    with pytest.raises(ConfigError) as caught:
        resolve(declared, {"target": "qa"}, manual=True)
    assert [str(i) for i in caught.value.issues] == [
        "inputs: inputs.target: expected one of 'staging', 'prod', got 'qa'",
        "inputs: inputs.dry_run: required input missing"]
    assert resolve(declared, {"target": "qa"}, manual=False) == {"INPUT_TARGET": "staging"}
    assert resolve({}, {"anything": "goes"}, manual=True) == {"INPUT_ANYTHING": "goes"}


def test_given_inputs_survive_the_meta_and_bad_ones_are_refused() -> None:
    given = given_inputs({"b": "2", "a": "1"})
    assert from_meta({"inputs": to_meta(given)}) == given and from_meta({}) == {}
    for bad in (["a"], {"a": 1}, {"-a": "1"}, {"a": "x\x00"}):
        with pytest.raises(ConfigError):
            given_inputs(bad)
