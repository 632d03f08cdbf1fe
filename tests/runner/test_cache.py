"""Cache keys, scopes and the cache manager against both stores: hits, fallbacks, misses, immutability, damage."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.pipeline import load_pipeline, pipeline_from_dict
from runner.cache import (
    CacheManager, CachePlan, Meter, plan_cache, plan_caches, rate, ref_scope, repo_id, scopes,
)
from runner.models import JobSpec, JobState
from runner.podman_user import PodmanUser
from runner.queue import Queue
from runner.store import FileStore, ObjectStore, S3Location, S3Store
from tests.runner.test_store import MotoServer, free_port, moto_server, s3_store  # noqa: F401 - a fixture

IMAGE = "localhost/forgeci-job:latest"
STEPS = {"steps": [{"run": "true"}]}


def spec(ref: str = "refs/heads/main", **kw: object) -> JobSpec:
    return JobSpec(repo="https://git.example.test/acme/app.git", ref=ref, **kw)  # type: ignore[arg-type]


def workspace(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def plan_for(ws: Path, job: JobSpec | None = None, pipeline: dict | None = None, image: str = IMAGE) -> CachePlan:
    plan = plan_cache(job or spec(), pipeline_from_dict(pipeline or STEPS, "t"), ws, image)
    assert plan is not None
    return plan


# -- keys and scopes ---------------------------------------------------------------------------------------


def test_repo_ids() -> None:
    assert repo_id("https://GitHub.com/acme/app.git") == "github.com/acme/app"
    assert repo_id("git@github.com:acme/app.git") == "github.com/acme/app"
    assert repo_id("https://token@github.com/acme/app") == "github.com/acme/app"
    assert repo_id("https://gitlab.example/acme/app") != repo_id("https://github.com/acme/app")
    assert repo_id("/srv/git/../repos/app") == "local/srv/repos/app"
    assert repo_id("file:///srv/repos/app.git") == "local/srv/repos/app"
    assert repo_id("https://h/a b/%2e%2e") == "h/a%20b/%252e%252e"


def test_scopes() -> None:
    assert scopes(spec()) == ("main", ("main",))
    assert ref_scope("refs/heads/feature/x") == "feature/x" and ref_scope("refs/tags/v1") == "tag~v1"
    pr = spec("refs/pull/7/head", pr_number=7, base_ref="main", event="pull_request")
    assert scopes(pr) == ("pull~7", ("pull~7", "main"))
    fork = spec("refs/pull/8/head", pr_number=8, base_ref="refs/heads/release/1", fork=True)
    assert scopes(fork) == ("pull~8", ("pull~8", "release/1"))  # reads the base, writes only its own
    assert scopes(spec("refs/heads/x", fork=True)) == ("fork~x", ("fork~x",))


def test_detection_points_package_manager_caches_into_the_workspace(tmp_path: Path) -> None:
    ws = workspace(tmp_path / "ws", {"package-lock.json": "{}", "requirements-dev.txt": "pytest\n", "go.sum": ""})
    plans = plan_caches(spec(), pipeline_from_dict(STEPS, "t"), ws, IMAGE)
    # One entry per toolchain, each keyed by its own lockfile: a changed go.sum leaves node_modules' key alone.
    assert [(p.name, p.key_files, p.paths) for p in plans] == [
        ("npm", ("package-lock.json",), (".forgeci-cache/npm", "node_modules")),
        ("pip", ("requirements-dev.txt",), (".forgeci-cache/pip", ".venv")),
        ("go", ("go.sum",), (".forgeci-cache/go/build", ".forgeci-cache/go/mod"))]
    assert all(p.detected and p.named and p.prefix == f"cache {p.name}:" for p in plans)
    assert len({p.key for p in plans}) == 3
    assert {k: v for p in plans for k, v in p.env.items()} == {
        "npm_config_cache": "/workspace/.forgeci-cache/npm", "PIP_CACHE_DIR": "/workspace/.forgeci-cache/pip",
        "GOMODCACHE": "/workspace/.forgeci-cache/go/mod", "GOCACHE": "/workspace/.forgeci-cache/go/build"}
    for lock, path, var in (("yarn.lock", ".forgeci-cache/yarn", "YARN_CACHE_FOLDER"),
                            ("pnpm-lock.yaml", ".forgeci-cache/pnpm-store", "npm_config_store_dir"),
                            ("poetry.lock", ".venv", "PIP_CACHE_DIR"), ("uv.lock", ".forgeci-cache/uv", "UV_CACHE_DIR"),
                            ("Cargo.lock", "target", "CARGO_HOME"), ("bun.lockb", ".forgeci-cache/bun", "BUN_INSTALL_CACHE_DIR"),
                            ("bun.lock", "node_modules", "BUN_INSTALL_CACHE_DIR")):
        found = plan_for(workspace(tmp_path / lock, {lock: "x"}))
        assert path in found.paths and var in found.env and not found.named, lock
    # Toolchains that share a path (both keep node_modules, both .venv) are one entry: its paths are its own.
    both = plan_caches(spec(), pipeline_from_dict(STEPS, "t"),
                       workspace(tmp_path / "both", {"package-lock.json": "{}", "yarn.lock": "", "uv.lock": "",
                                                     "requirements.txt": ""}), IMAGE)
    assert [(p.name, p.key_files) for p in both] == [("npm+yarn", ("package-lock.json", "yarn.lock")),
                                                     ("pip+uv", ("requirements.txt", "uv.lock"))]
    assert plan_caches(spec(), pipeline_from_dict(STEPS, "t"), workspace(tmp_path / "none", {"README": ""}),
                       IMAGE) == ()


def test_key_hashes_lockfiles_image_and_paths_never_the_commit(tmp_path: Path) -> None:
    one = plan_for(workspace(tmp_path / "a", {"package-lock.json": "v1", "src.js": "commit one"}),
                   spec(sha="a" * 40))
    two = plan_for(workspace(tmp_path / "b", {"package-lock.json": "v1", "src.js": "commit two"}),
                   spec(sha="b" * 40))
    assert one.key == two.key and one.key.startswith("git.example.test/acme/app/main/")
    assert plan_for(workspace(tmp_path / "c", {"package-lock.json": "v2"})).key != one.key
    assert plan_for(tmp_path / "a", image="other:1").key != one.key
    explicit = {"cache": {"paths": ["vendor"], "key_files": ["package-lock.json", "absent.lock"]}, **STEPS}
    custom = plan_for(tmp_path / "a", pipeline=explicit)
    assert custom.paths == ("vendor",) and not custom.detected and custom.env == {}
    assert custom.key != one.key and custom.key == plan_for(tmp_path / "b", pipeline=explicit).key
    assert plan_for(tmp_path / "a", spec("refs/heads/dev")).key == one.key.replace("/main/", "/dev/")


# -- the manager -------------------------------------------------------------------------------------------


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "file":
        made: ObjectStore = FileStore(tmp_path / "store")
    else:
        made = s3_store(request)
    yield made
    made.close()


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[Queue]:
    with Queue(tmp_path / "queue.db") as q:
        yield q


class Log(list[str]):
    def __call__(self, text: str) -> None:
        self.append(text)

    def has(self, text: str) -> bool:
        return any(text in line for line in self)


def node_workspace(root: Path, lock: str = "v1", modules: bool = False) -> Path:
    files = {"package-lock.json": lock, "index.js": "x"}
    if modules:
        files |= {"node_modules/left-pad/index.js": f"built for {lock}", ".forgeci-cache/npm/_cacache/x": "cached"}
    return workspace(root, files)


def test_miss_save_then_hit_on_a_new_commit(tmp_path: Path, store: ObjectStore, queue: Queue,
                                            podman_user: PodmanUser) -> None:
    cache = CacheManager(store, queue, podman_user)
    first = node_workspace(tmp_path / "job1", modules=True)
    log = Log()
    assert cache.restore(plan_for(first), first, log).outcome == "miss" and log.has("cache: miss ")
    entry = cache.save(plan_for(first), first, log)
    assert entry is not None and log.has(f"cache: saved {entry.key} (") and log.has("MB/s")
    assert [o.key for o in store.list("caches/")] == [entry.object]

    second = node_workspace(tmp_path / "job2")  # another commit, same lockfile
    (second / "index.js").write_text("changed")
    log = Log()
    result = cache.restore(plan_for(second), second, log)
    assert result.outcome == "hit" and result.entry == entry
    assert log.has(f"cache: hit {entry.key} (") and log.has("MB/s")
    assert (second / "node_modules" / "left-pad" / "index.js").read_text() == "built for v1"
    assert (second / ".forgeci-cache" / "npm" / "_cacache" / "x").read_text() == "cached"
    assert not list(second.glob(".forgeci-restore-*"))  # the staging folder is gone
    st = (second / "node_modules" / "left-pad").stat()
    assert (st.st_uid, st.st_gid) == ((podman_user.uid, podman_user.gid) if podman_user.switch else (os.getuid(),
                                                                                                     os.getgid()))
    stored = queue.cache_entry(entry.key)
    assert stored is not None and stored.hits == 1 and stored.last_used >= entry.last_used


def test_entries_are_immutable(tmp_path: Path, store: ObjectStore, queue: Queue, podman_user: PodmanUser) -> None:
    cache = CacheManager(store, queue, podman_user)
    ws = node_workspace(tmp_path / "ws", modules=True)
    entry = cache.save(plan_for(ws), ws, Log())
    assert entry is not None
    (ws / "node_modules" / "left-pad" / "index.js").write_text("changed later")
    log = Log()
    assert cache.save(plan_for(ws), ws, log) is None
    assert log.has("already exists") and log.has("not uploaded again")
    assert [o.key for o in store.list("caches/")] == [entry.object]
    assert queue.cache_entry(entry.key) == entry


def test_fallback_to_the_newest_entry_with_the_same_paths(tmp_path: Path, store: ObjectStore, queue: Queue,
                                                         podman_user: PodmanUser) -> None:
    clock = iter(range(1000, 2000))
    cache = CacheManager(store, queue, podman_user, clock=lambda: float(next(clock)))
    for lock in ("v1", "v2"):
        ws = node_workspace(tmp_path / f"saved-{lock}", lock, modules=True)
        assert cache.save(plan_for(ws), ws, Log()) is not None
    ws = node_workspace(tmp_path / "v3", "v3")
    log = Log()
    result = cache.restore(plan_for(ws), ws, log)
    assert result.outcome == "fallback" and log.has("fallback hit") and log.has("no entry for")
    assert (ws / "node_modules" / "left-pad" / "index.js").read_text() == "built for v2"  # the newest one
    other_paths = {"cache": {"paths": ["node_modules"], "key_files": ["package-lock.json"]}, **STEPS}
    ws2 = node_workspace(tmp_path / "paths", "v3")
    assert cache.restore(plan_for(ws2, pipeline=other_paths), ws2, Log()).outcome == "miss"
    ws3 = node_workspace(tmp_path / "image", "v3")
    assert cache.restore(plan_for(ws3, image="another:1"), ws3, Log()).outcome == "miss"


def test_pull_request_scopes(tmp_path: Path, store: ObjectStore, queue: Queue, podman_user: PodmanUser) -> None:
    cache = CacheManager(store, queue, podman_user)
    main_ws = node_workspace(tmp_path / "main", modules=True)
    main_entry = cache.save(plan_for(main_ws), main_ws, Log())
    assert main_entry is not None

    fork = spec("refs/pull/9/head", pr_number=9, base_ref="main", fork=True, event="pull_request")
    pr_ws = node_workspace(tmp_path / "pr", modules=False)
    result = cache.restore(plan_for(pr_ws, fork), pr_ws, Log())
    assert result.outcome == "hit" and result.entry == main_entry  # it reads its base branch
    (pr_ws / "node_modules" / "left-pad" / "index.js").write_text("poisoned by a fork")
    (pr_ws / "package-lock.json").write_text("v1")  # same key material as main
    saved = cache.save(plan_for(pr_ws, fork), pr_ws, Log())
    assert saved is not None and saved.scope == "pull~9" and saved.key != main_entry.key
    kept = queue.cache_entry(main_entry.key)
    assert kept is not None and (kept.object, kept.checksum) == (main_entry.object, main_entry.checksum)
    assert [e.scope for e in queue.cache_entries()] == ["pull~9", "main"]

    again = node_workspace(tmp_path / "main-again")
    restored = cache.restore(plan_for(again), again, Log()).entry
    assert restored is not None and restored.key == main_entry.key
    assert (again / "node_modules" / "left-pad" / "index.js").read_text() == "built for v1"
    pr_again = node_workspace(tmp_path / "pr-again")
    mine = cache.restore(plan_for(pr_again, fork), pr_again, Log()).entry
    assert mine is not None and mine.key == saved.key  # its own scope first
    other = node_workspace(tmp_path / "other-branch")
    assert cache.restore(plan_for(other, spec("refs/heads/dev")), other, Log()).outcome == "miss"


def test_a_corrupted_archive_is_a_miss_and_is_deleted(tmp_path: Path, store: ObjectStore, queue: Queue,
                                                      podman_user: PodmanUser) -> None:
    cache = CacheManager(store, queue, podman_user)
    ws = node_workspace(tmp_path / "ws", modules=True)
    entry = cache.save(plan_for(ws), ws, Log())
    assert entry is not None
    with store.get_stream(entry.object) as stream:
        data = bytearray(stream.read())
    data[len(data) // 2] ^= 0x55
    store.put_stream(entry.object, io.BytesIO(bytes(data)))
    fresh = node_workspace(tmp_path / "fresh")
    log = Log()
    assert cache.restore(plan_for(fresh), fresh, log).outcome == "miss"
    assert log.has("cannot be restored") and log.has("deleted, counted as a miss")
    assert queue.cache_entry(entry.key) is None and list(store.list("caches/")) == []
    assert not (fresh / "node_modules").exists() and not list(fresh.glob(".forgeci-restore-*"))

    # A whole, valid archive that is not the one indexed: only the sha256 can tell.
    entry = cache.save(plan_for(ws), ws, Log())
    assert entry is not None
    other = node_workspace(tmp_path / "other", "v1", modules=True)
    (other / "node_modules" / "left-pad" / "index.js").write_text("swapped in the store")
    impostor = cache.save(plan_for(other, spec("refs/heads/elsewhere")), other, Log())
    assert impostor is not None
    with store.get_stream(impostor.object) as stream:
        store.put_stream(entry.object, io.BytesIO(stream.read()))
    log = Log()
    assert cache.restore(plan_for(fresh), fresh, log).outcome == "miss" and log.has("checksum mismatch")
    assert queue.cache_entry(entry.key) is None and not (fresh / "node_modules").exists()


def test_an_indexed_entry_missing_from_the_store_is_forgotten(tmp_path: Path, store: ObjectStore, queue: Queue,
                                                              podman_user: PodmanUser) -> None:
    cache = CacheManager(store, queue, podman_user)
    ws = node_workspace(tmp_path / "ws", modules=True)
    entry = cache.save(plan_for(ws), ws, Log())
    assert entry is not None
    store.delete(entry.object)
    log = Log()
    assert cache.restore(plan_for(ws), ws, log).outcome == "miss" and log.has("gone from the store")
    assert queue.cache_entry(entry.key) is None


def test_a_store_that_is_down_is_a_miss_and_an_unsaved_cache(tmp_path: Path, queue: Queue,
                                                             podman_user: PodmanUser, moto_server: MotoServer) -> None:
    up = moto_server.store()
    ws = node_workspace(tmp_path / "ws", modules=True)
    entry = CacheManager(up, queue, podman_user).save(plan_for(ws), ws, Log())
    assert entry is not None
    dead = S3Store(S3Location.parse(f"s3://{up.bucket}?endpoint=http://127.0.0.1:{free_port()}"), "k", "s",
                   backoff=0.05)
    cache = CacheManager(dead, queue, podman_user)
    fresh = node_workspace(tmp_path / "fresh", modules=False)
    log = Log()
    assert cache.restore(plan_for(fresh), fresh, log).outcome == "miss"
    assert log.has("warning: the store is unavailable") and queue.cache_entry(entry.key) == entry  # kept
    (fresh / "package-lock.json").write_text("v2")
    (fresh / "node_modules").mkdir()
    log = Log()
    assert cache.save(plan_for(fresh), fresh, log) is None and log.has("warning: not saved")
    assert not dead.health(max_age=0).ok


def test_restored_paths_replace_the_checkout_and_never_go_through_its_links(
        tmp_path: Path, queue: Queue, podman_user: PodmanUser) -> None:
    store = FileStore(tmp_path / "store")
    cache = CacheManager(store, queue, podman_user)
    explicit = {"cache": {"paths": ["node_modules", "deep/er"]}, **STEPS}
    ws = workspace(tmp_path / "ws", {"node_modules/x": "cached", "deep/er/y": "cached"})
    assert cache.save(plan_for(ws, pipeline=explicit), ws, Log()) is not None
    (tmp_path / "outside").mkdir()
    checkout = workspace(tmp_path / "checkout", {"node_modules/committed": "from git"})
    (checkout / "deep").symlink_to(tmp_path / "outside")  # a repository may commit a link
    log = Log()
    assert cache.restore(plan_for(checkout, pipeline=explicit), checkout, log).outcome == "miss"
    assert log.has("not a directory") and list((tmp_path / "outside").iterdir()) == []
    (checkout / "deep").unlink()
    assert cache.restore(plan_for(checkout, pipeline=explicit), checkout, Log()).outcome == "hit"
    assert sorted(p.name for p in (checkout / "node_modules").iterdir()) == ["x"]
    assert (checkout / "deep" / "er" / "y").read_text() == "cached"


def test_the_job_records_whether_it_hit(tmp_path: Path, queue: Queue, podman_user: PodmanUser) -> None:
    cache = CacheManager(FileStore(tmp_path / "store"), queue, podman_user)
    ws = node_workspace(tmp_path / "ws", modules=True)
    job_id = queue.enqueue(spec())
    assert queue.claim("r", 60) is not None
    cache.restore(plan_for(ws), ws, Log(), job_id=job_id)
    assert queue.get(job_id).cache_hit is False
    cache.save(plan_for(ws), ws, Log())
    cache.restore(plan_for(ws), ws, Log(), job_id=job_id)
    assert queue.get(job_id).cache_hit is True
    queue.complete(job_id, JobState.success)


def test_delete_removes_entry_and_archive(tmp_path: Path, queue: Queue, podman_user: PodmanUser) -> None:
    store = FileStore(tmp_path / "store")
    cache = CacheManager(store, queue, podman_user)
    ws = node_workspace(tmp_path / "ws", modules=True)
    entry = cache.save(plan_for(ws), ws, Log())
    assert entry is not None and queue.cache_stats() == {"entries": 1, "bytes": entry.size, "hits": 0}
    assert cache.delete(entry.key) == entry and cache.delete(entry.key) is None
    assert list(store.list("")) == [] and queue.cache_stats()["entries"] == 0


def test_long_transfers_report_progress() -> None:
    lines = Log()
    meter = Meter(lines, "cache: saving k", every=0.0)
    meter(5_000_000)
    meter(12_000_000)
    assert len(lines) == 2 and lines[1].startswith("cache: saving k: 12.0 MB in ") and lines[1].endswith(" so far")
    assert "MB/s" in lines[1]
    quiet = Log()
    Meter(quiet, "x")(1)  # within the first PROGRESS_EVERY seconds: nothing
    assert quiet == []
    assert rate(1536, 0.5) == "1.5 kB in 0.50s, 0.0 MB/s" and rate(95_100_000, 12.0).startswith("95.1 MB in 12s, 7.9")


def test_the_jobs_forgeci_init_writes_cache_what_they_install(tmp_path: Path) -> None:
    """A Node project without a lockfile and a Python one: nothing to detect, so the starter names each job's cache
    and its package manager's variables itself; each job caches its own toolchain's paths, keyed by its manifest."""
    from config.plan import expand
    from config.starter import write_starter

    ws = workspace(tmp_path / "ws", {"package.json": '{"scripts": {"test": "node t.js"}}',
                                     "pyproject.toml": '[project]\nname = "d"\nversion = "1"\n'})
    assert plan_cache(spec(), pipeline_from_dict(STEPS, "t"), ws, IMAGE) is None  # no lockfile: nothing detected
    jobs = {job.name: job.pipeline for job in expand(load_pipeline(write_starter(ws)))}
    node, python = plan_cache(spec(), jobs["node"], ws, IMAGE), plan_cache(spec(), jobs["python"], ws, IMAGE)
    assert node is not None and python is not None and not node.detected
    assert node.paths == (".forgeci-cache/npm", "node_modules") and node.key_files == ("package.json",)
    assert python.paths == (".forgeci-cache/pip", ".venv") and python.key_files == ("pyproject.toml",)
    assert node.key != python.key
    assert jobs["node"].env["npm_config_cache"] == "/workspace/.forgeci-cache/npm"
    assert jobs["python"].env["PIP_CACHE_DIR"] == "/workspace/.forgeci-cache/pip"
