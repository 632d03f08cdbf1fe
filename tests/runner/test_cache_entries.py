"""Several cache entries per job: each keyed, restored (in parallel), saved and recorded on its own, against both
stores; the per-repository LRU size limit after a save and at maintenance; the hit rate over entries."""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.pipeline import pipeline_from_dict
from config.settings import RetentionSettings, Settings
from runner.cache import CacheManager, CachePlan, plan_caches
from runner.cache_lru import evict_all, evict_over_limit
from runner.layout import DataLayout
from runner.maintenance import MaintenanceParts, prune
from runner.models import CacheEntry, CacheResult, JobSpec, JobState
from runner.podman_user import PodmanUser
from runner.queue import Queue, schema
from runner.store import FileStore, ObjectStore
from tests.runner.test_migrations import build
from tests.runner.test_store import MotoServer, moto_server, s3_store  # noqa: F401 - fixtures

IMAGE = "localhost/forgeci-job:latest"
TWO = {"cache": [{"name": "node", "paths": ["node_modules"], "key_files": ["package-lock.json"]},
                 {"name": "pip", "paths": [".venv"], "key_files": ["requirements*.txt"]}],
       "steps": [{"run": "true"}]}


def spec(ref: str = "refs/heads/main") -> JobSpec:
    return JobSpec(repo="https://git.example.test/acme/app.git", ref=ref)


def tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def monorepo(root: Path, lock: str = "n1", reqs: str = "p1", built: bool = True) -> Path:
    files = {"package-lock.json": lock, "requirements.txt": reqs, "requirements-dev.txt": "pytest"}
    if built:
        files |= {"node_modules/dep/index.js": f"node for {lock}", ".venv/lib/site.py": f"venv for {reqs}"}
    return tree(root, files)


def plans(ws: Path, pipeline: dict | None = None, job: JobSpec | None = None) -> tuple[CachePlan, ...]:
    return plan_caches(job or spec(), pipeline_from_dict(pipeline or TWO, "t"), ws, IMAGE)


class Log(list[str]):
    def __call__(self, text: str) -> None:
        self.append(text)

    def has(self, text: str) -> bool:
        return any(text in line for line in self)


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    made: ObjectStore = FileStore(tmp_path / "store") if request.param == "file" else s3_store(request)
    yield made
    made.close()


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[Queue]:
    with Queue(tmp_path / "queue.db") as q:
        yield q


def running_job(queue: Queue) -> int:
    job_id = queue.enqueue(spec())
    claimed = queue.claim("r", 60)
    assert claimed is not None and claimed.id == job_id
    return job_id


# -- keys ------------------------------------------------------------------------------------------------


def test_each_entry_has_its_own_key_from_its_own_files(tmp_path: Path) -> None:
    node, pip = plans(monorepo(tmp_path / "a"))
    assert (node.name, node.paths, node.key_files, node.prefix) == ("node", ("node_modules",),
                                                                     ("package-lock.json",), "cache node:")
    assert pip.key_files == ("requirements-dev.txt", "requirements.txt")  # the glob, expanded in order
    assert node.key != pip.key
    other_node, other_pip = plans(monorepo(tmp_path / "b", reqs="p2"))
    assert other_node.key == node.key and other_pip.key != pip.key
    (tmp_path / "b" / "requirements-extra.txt").write_text("x")  # a new file the glob matches changes the key
    assert plans(tmp_path / "b")[1].key != other_pip.key
    # An unnamed [cache] table keeps the key it had before entries had names; a name is part of the key.
    table = {"cache": {"paths": ["node_modules"], "key_files": ["package-lock.json"]}, "steps": [{"run": "x"}]}
    [single] = plans(tmp_path / "a", table)
    assert (single.name, single.prefix, single.named) == ("cache", "cache:", False)
    named = {"cache": {**table["cache"], "name": "node"}, "steps": table["steps"]}
    assert plans(tmp_path / "a", named)[0].key != single.key
    unnamed = {"cache": [{"paths": ["a"]}, {"paths": ["b"]}], "steps": [{"run": "x"}]}
    assert [p.name for p in plans(tmp_path / "a", unnamed)] == ["cache-1", "cache-2"]


# -- restore and save, entry by entry ------------------------------------------------------------------------


def test_changing_one_key_file_misses_only_its_entry(tmp_path: Path, store: ObjectStore, queue: Queue,
                                                     podman_user: PodmanUser) -> None:
    cache = CacheManager(store, queue, podman_user)
    first = monorepo(tmp_path / "first")
    saved = cache.save_all(plans(first), first, Log())
    assert [e is not None for e in saved] == [True, True] and len(queue.cache_entries()) == 2

    second = monorepo(tmp_path / "second", reqs="p2", built=False)
    job_id = running_job(queue)
    log = Log()
    node, pip = plans(second)
    results = cache.restore_all((node, pip), second, log, job_id=job_id, attempt=1)
    assert [r.outcome for r in results] == ["hit", "fallback"]
    assert results[1].entry is not None and results[1].entry.key == saved[1].key  # type: ignore[union-attr]
    assert log.has(f"cache node: hit {node.key} (") and log.has(f"cache pip: no entry for {pip.key}")
    assert log.has(f"cache: node hit, pip fallback from {saved[1].key}")  # type: ignore[union-attr]
    assert (second / "node_modules/dep/index.js").read_text() == "node for n1"
    assert (second / ".venv/lib/site.py").read_text() == "venv for p1"  # the fallback's files, to update
    job = queue.get(job_id)
    assert (job.cache, job.cache_hit) == ("some", False)
    rows = {r.name: r for r in queue.cache_results(job_id)}
    assert (rows["node"].result, rows["node"].restored_key, rows["node"].key) == ("hit", node.key, node.key)
    assert (rows["pip"].result, rows["pip"].restored_key) == ("fallback", saved[1].key)  # type: ignore[union-attr]
    assert rows["node"].size > 0 and rows["node"].seconds >= 0

    cache.save_all((node, pip), second, Log(), job_id=job_id, attempt=1)
    rows = {r.name: r for r in queue.cache_results(job_id)}
    assert (rows["node"].saved, rows["pip"].saved) == ("exists", "saved") and rows["pip"].saved_size
    queue.complete(job_id, JobState.success)
    stats = queue.range_stats(0, time.time() + 60)
    assert (stats.cache_hits, stats.cache_lookups) == (1, 2)  # the hit rate counts entries, not jobs
    assert stats.cache_results == {"hit": 1, "fallback": 1, "miss": 0}


def test_restore_keys_false_misses_instead_of_falling_back(tmp_path: Path, queue: Queue,
                                                           podman_user: PodmanUser) -> None:
    cache = CacheManager(FileStore(tmp_path / "store"), queue, podman_user)
    pipeline = {**TWO, "cache": [TWO["cache"][0], {**TWO["cache"][1], "restore_keys": False}]}
    first = monorepo(tmp_path / "first")
    cache.save_all(plans(first, pipeline), first, Log())
    changed = monorepo(tmp_path / "changed", lock="n2", reqs="p2", built=False)
    job_id = running_job(queue)
    results = cache.restore_all(plans(changed, pipeline), changed, Log(), job_id=job_id)
    assert [r.outcome for r in results] == ["fallback", "miss"]
    assert not (changed / ".venv").exists() and queue.get(job_id).cache == "none"


def test_entries_restore_one_by_one_as_well_as_in_parallel(tmp_path: Path, queue: Queue,
                                                          podman_user: PodmanUser) -> None:
    store = FileStore(tmp_path / "store")
    pipeline = {"cache": [{"name": f"e{i}", "paths": [f"deps/e{i}"], "key_files": ["lock"]} for i in range(6)],
                "steps": [{"run": "x"}]}
    source = tree(tmp_path / "src", {"lock": "1", **{f"deps/e{i}/f": str(i) for i in range(6)}})
    CacheManager(store, queue, podman_user).save_all(plans(source, pipeline), source, Log())
    for parallel in (1, 4):
        target = tree(tmp_path / f"t{parallel}", {"lock": "1"})
        results = CacheManager(store, queue, podman_user, parallel=parallel).restore_all(
            plans(target, pipeline), target, Log())
        assert [r.outcome for r in results] == ["hit"] * 6
        assert [(target / f"deps/e{i}/f").read_text() for i in range(6)] == [str(i) for i in range(6)]


def test_a_job_of_all_hits_and_one_of_none(tmp_path: Path, queue: Queue, podman_user: PodmanUser) -> None:
    cache = CacheManager(FileStore(tmp_path / "store"), queue, podman_user)
    ws = monorepo(tmp_path / "ws")
    missed = running_job(queue)
    cache.restore_all(plans(ws), ws, Log(), job_id=missed)
    assert (queue.get(missed).cache, queue.get(missed).cache_hit) == ("none", False)
    queue.complete(missed, JobState.success)
    cache.save_all(plans(ws), ws, Log())
    hit = running_job(queue)
    cache.restore_all(plans(ws), ws, Log(), job_id=hit)
    assert (queue.get(hit).cache, queue.get(hit).cache_hit) == ("all", True)
    assert queue.get(hit).to_dict()["cache"] == "all"


# -- the per-repository size limit ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def test_lru_eviction_keeps_a_repository_under_its_limit_least_recently_restored_first(
        tmp_path: Path, store: ObjectStore, podman_user: PodmanUser) -> None:
    clock = Clock()
    with Queue(tmp_path / "lru.db", clock=clock) as queue:
        unlimited = CacheManager(store, queue, podman_user, clock=clock)
        entries = []
        for i in range(3):  # a, b, c saved in that order
            clock.t += 10
            ws = tree(tmp_path / f"w{i}", {"lock": str(i), "deps/blob": str(i) * 20_000})
            [plan] = plans(ws, {"cache": {"paths": ["deps"], "key_files": ["lock"]}, "steps": [{"run": "x"}]})
            entries.append(unlimited.save(plan, ws, Log()))
        a, b, c = entries
        assert a and b and c
        clock.t += 10  # `a` is restored: now it is the most recently used, `b` the least
        restored = tree(tmp_path / "r", {"lock": "0"})
        [plan_a] = plans(restored, {"cache": {"paths": ["deps"], "key_files": ["lock"]}, "steps": [{"run": "x"}]})
        assert unlimited.restore(plan_a, restored, Log()).outcome == "hit"
        assert queue.cache_entry(a.key).last_used == clock.t  # type: ignore[union-attr]

        limit = a.size + c.size + a.size // 2  # room for two entries and a half
        limited = CacheManager(store, queue, podman_user, clock=clock, repo_limit=limit)
        clock.t += 10
        ws = tree(tmp_path / "w3", {"lock": "3", "deps/blob": "3" * 20_000})
        [plan_d] = plans(ws, {"cache": {"paths": ["deps"], "key_files": ["lock"]}, "steps": [{"run": "x"}]})
        log = Log()
        d = limited.save(plan_d, ws, log)
        assert d is not None
        left = {e.key for e in queue.cache_entries()}
        # b (least recently used) went first, then c; a (restored) and d (just written) stay.
        assert left == {a.key, d.key}, log
        assert log.has(f"cache: evicted {b.key} (") and log.has("over their")
        assert sum(e.size for e in queue.cache_entries()) <= limit
        assert {o.key for o in store.list('caches/')} == {a.object, d.object}

        # The one just written is never evicted, even alone over the limit.
        tiny = CacheManager(store, queue, podman_user, clock=clock, repo_limit=1)
        clock.t += 10
        ws = tree(tmp_path / "w4", {"lock": "4", "deps/blob": "4" * 20_000})
        [plan_e] = plans(ws, {"cache": {"paths": ["deps"], "key_files": ["lock"]}, "steps": [{"run": "x"}]})
        e = tiny.save(plan_e, ws, Log())
        assert e is not None and [x.key for x in queue.cache_entries()] == [e.key]


def test_maintenance_brings_every_repository_under_the_limit(tmp_path: Path, podman_user: PodmanUser) -> None:
    clock = Clock()
    store = FileStore(tmp_path / "store")
    with Queue(tmp_path / "m.db", clock=clock) as queue:
        cache = CacheManager(store, queue, podman_user, clock=clock)
        for repo in ("one", "two"):
            for i in range(3):
                clock.t += 10
                ws = tree(tmp_path / f"{repo}{i}", {"lock": str(i), "deps/x": str(i) * 5000})
                job = JobSpec(repo=f"https://git.example.test/acme/{repo}.git", ref="refs/heads/main")
                [plan] = plan_caches(job, pipeline_from_dict(
                    {"cache": {"paths": ["deps"], "key_files": ["lock"]}, "steps": [{"run": "x"}]}, "t"), ws, IMAGE)
                cache.save(plan, ws, Log())
        sizes = queue.repo_cache_bytes()
        one_entry = max(e.size for e in queue.cache_entries())
        errors: list[str] = []
        evicted = evict_all(queue, store, one_entry, errors)
        assert errors == [] and len(evicted) == 4
        assert all(size <= one_entry for size in queue.repo_cache_bytes().values()) and len(sizes) == 2
        newest = {e.repo: e.created_at for e in queue.cache_entries()}
        assert len(newest) == 2 and all(t >= 1_000_030.0 for t in newest.values())  # the last of each stayed
        assert evict_over_limit(queue, store, "nobody", 1) == []


def test_the_results_of_each_attempt_and_their_retention(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db") as queue:
        job_id = running_job(queue)
        queue.record_cache_restores(job_id, 1, [CacheResult("a", "k1", "miss"), CacheResult("b", "k2", "hit")])
        queue.record_cache_restores(job_id, 2, [CacheResult("a", "k1", "hit"), CacheResult("b", "k2", "hit")])
        assert [(r.name, r.result, r.attempt) for r in queue.cache_results(job_id)] == [("a", "hit", 2),
                                                                                      ("b", "hit", 2)]
        assert queue.get(job_id).cache == "all"
        queue.complete(job_id, JobState.success)
        with pytest.raises(Exception, match="not running"):
            queue.record_cache_restores(job_id, 3, [CacheResult("a", "k1", "hit")])
        assert queue.delete_cache_results_before(time.time() + 60) == 4 and queue.cache_results(job_id) == ()


def test_the_hourly_maintenance_applies_the_limit(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    settings = dataclasses.replace(Settings.default(), data_dir=tmp_path,
                                   retention=RetentionSettings(cache_bytes_per_repo=250))
    layout = DataLayout(tmp_path)
    layout.logs.mkdir()
    with Queue(layout.db, clock=lambda: now) as queue:
        parts = MaintenanceParts(settings, layout, queue, FileStore(layout.store))
        for name, used in (("a", now - 30), ("b", now - 10), ("c", now - 20)):
            entry = CacheEntry(f"r/main/{name}", "r", "main", "img", (name,), f"caches/r/main/{name}/o.tar.zst", 100,
                               "c" * 64, used, used)
            parts.store.put_stream(entry.object, io.BytesIO(b"x" * 100))
            assert queue.add_cache_entry(entry)
        report = prune(parts, now=now)
        assert report.caches == 1 and report.errors == ()
        assert sorted(e.key for e in queue.cache_entries()) == ["r/main/b", "r/main/c"]  # `a`, least recent, went


@pytest.mark.sqlite_file  # a database file an older forgeci left (built from its migrations)
def test_older_rows_read_the_same_and_count_in_the_hit_rate(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    before = next(i for i, script in enumerate(schema.MIGRATIONS) if "CREATE TABLE job_caches" in script)
    build(db, before)  # the database as forgeci left it before several caches per job
    with Queue(db) as queue:
        assert (queue.get(1).cache, queue.get(1).cache_hit) == ("all", True)  # its one entry hit
        assert (queue.get(2).cache, queue.get(2).cache_hit) == ("none", False)
        assert queue.get(3).cache is None
        stats = queue.range_stats(0.0, 1e12)
        # job_metrics had one row with a cache result (job 2, a miss): copied in as one entry.
        assert (stats.cache_hits, stats.cache_lookups) == (0, 1)
        assert [(r.name, r.result, r.attempt) for r in queue.cache_results(2)] == [("cache", "miss", 0)]
