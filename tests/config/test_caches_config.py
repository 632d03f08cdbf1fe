"""The pipeline's caches: one [cache] table or several [[cache]] entries, at the top level and per job."""

from __future__ import annotations

import pytest

from config.caches import MAX_CACHES, CacheSpec, cache_label, cache_specs
from config.errors import ConfigError
from config.pipeline import parse_pipeline, pipeline_to_toml
from config.plan import expand

STEPS = '[[steps]]\nrun = "make"\n'
TWO = '''
[[cache]]
name = "node"
paths = ["node_modules"]
key_files = ["package-lock.json"]

[[cache]]
name = "pip"
paths = [".venv"]
key_files = ["requirements*.txt"]
restore_keys = false
save = "always"
'''


def issues(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as raised:
        parse_pipeline(text, "t")
    return {issue.path: issue.message for issue in raised.value.issues}


def test_several_entries_parse_and_round_trip() -> None:
    pipeline = parse_pipeline(TWO + STEPS, "t")
    assert pipeline.cache == (
        CacheSpec(name="node", paths=("node_modules",), key_files=("package-lock.json",)),
        CacheSpec(name="pip", paths=(".venv",), key_files=("requirements*.txt",), save="always", restore_keys=False))
    text = pipeline_to_toml(pipeline)
    assert text.count("[[cache]]") == 2 and parse_pipeline(text, "t") == pipeline
    assert [cache_label(s, i, 2) for i, s in enumerate(cache_specs(pipeline.cache))] == ["node", "pip"]


def test_the_old_table_is_one_entry() -> None:
    pipeline = parse_pipeline('[cache]\npaths = ["node_modules"]\n' + STEPS, "t")
    assert pipeline.cache == CacheSpec(paths=("node_modules",))
    assert cache_specs(pipeline.cache) == (CacheSpec(paths=("node_modules",)),) and cache_specs(None) == ()
    assert "[cache]\n" in pipeline_to_toml(pipeline) and "[[cache]]" not in pipeline_to_toml(pipeline)
    assert cache_label(CacheSpec(paths=("a",)), 0, 1) == "cache" and cache_label(CacheSpec(paths=("a",)), 1, 3) == \
        "cache-2"


def test_a_job_has_its_own_entries_over_the_top_level_ones() -> None:
    text = TWO + '''
[jobs.front]
steps = [{ run = "npm ci" }]

[[jobs.front.cache]]
name = "npm"
paths = ["web/node_modules"]

[jobs.back]
steps = [{ run = "pytest" }]
'''
    pipeline = parse_pipeline(text, "t")
    jobs = {job.name: job.pipeline for job in expand(pipeline)}
    assert [s.name for s in cache_specs(jobs["front"].cache)] == ["npm"]
    assert [s.name for s in cache_specs(jobs["back"].cache)] == ["node", "pip"]
    again = parse_pipeline(pipeline_to_toml(pipeline), "t")
    assert again == pipeline


def test_each_mistake_in_the_entries_names_its_place() -> None:
    assert issues(TWO.replace('name = "pip"', 'name = "node"') + STEPS) == {
        "cache[1].name": "duplicate cache name 'node' (also cache[0])"}
    assert issues('[[cache]]\npaths = ["deps"]\n[[cache]]\npaths = ["deps/sub"]\n' + STEPS) == {
        "cache[1].paths": "'deps/sub' overlaps 'deps' of cache[0]: an entry's paths must be its own"}
    assert issues('[[cache]]\nname = "a b"\npaths = ["x"]\n' + STEPS) == {
        "cache[0].name": "expected a name of letters, digits, '_', '.', '-', got 'a b'"}
    assert issues('[[cache]]\npaths = ["x"]\nrestore_keys = "no"\n' + STEPS) == {
        "cache[0].restore_keys": "expected true or false, got 'no'"}
    assert issues('[[cache]]\nkey_files = ["x"]\n' + STEPS) == {
        "cache[0].paths": "missing required key (array of paths)"}
    many = "".join(f'[[cache]]\npaths = ["p{i}"]\n' for i in range(MAX_CACHES + 1))
    assert issues(many + STEPS) == {"cache": f"at most {MAX_CACHES} [[cache]] entries, got {MAX_CACHES + 1}"}
    # Unnamed entries of an array are told apart by position, so they never clash.
    assert len(cache_specs(parse_pipeline('[[cache]]\npaths = ["a"]\n[[cache]]\npaths = ["b"]\n' + STEPS,
                                          "t").cache)) == 2
