"""A job's cache entries as the client reads /jobs/status, and as `forgeci status` and the TUI say them."""

from __future__ import annotations

from client.commands import describe
from client.models import JobInfo

BASE = {"id": 7, "state": "success", "spec": {"repo": "r", "ref": "main"}, "attempts": 1}


def test_several_entries_are_read_and_said_one_by_one() -> None:
    job = JobInfo.from_dict({**BASE, "cache_hit": False, "cache": "some", "caches": [
        {"name": "node", "key": "k1", "result": "hit", "restored_key": "k1", "size": 10, "seconds": 0.5,
         "saved": "exists"},
        {"name": "pip", "key": "k2", "result": "fallback", "restored_key": "k0", "size": 5, "seconds": 0.1},
        "junk"]})
    assert [(c.name, c.result, c.restored_key, c.saved) for c in job.caches] == [
        ("node", "hit", "k1", "exists"), ("pip", "fallback", "k0", None)]
    assert job.cache_text == "some hit (node hit, pip fallback from k0)"
    assert "cache some hit (node hit, pip fallback from k0)" in describe(job)


def test_single_entries_and_older_servers() -> None:
    assert JobInfo.from_dict({**BASE, "cache_hit": True, "cache": "all",
                              "caches": [{"name": "cache", "result": "hit"}]}).cache_text == "hit"
    assert JobInfo.from_dict({**BASE, "cache_hit": True}).cache_text == "hit"  # no `cache`: from cache_hit
    assert JobInfo.from_dict({**BASE, "cache_hit": False}).cache_text == "miss"
    assert JobInfo.from_dict({**BASE, "cache_hit": None}).cache_text == "no restore"
    fallback = JobInfo.from_dict({**BASE, "cache_hit": False, "cache": "none",
                                  "caches": [{"name": "cache", "result": "fallback", "restored_key": "old"}]})
    assert fallback.cache_text == "miss (cache fallback from old)"
    assert JobInfo.from_dict({**BASE, "cache": "all", "caches": [{"name": "a", "result": "hit"},
                                                                 {"name": "b", "result": "hit"}]}).cache_text == \
        "all hit (a hit, b hit)"
