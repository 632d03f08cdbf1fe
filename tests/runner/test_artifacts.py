"""Artifacts without an engine: globs, what is left out (links out of the workspace), the tar index, the size limit,
restores that refuse hostile archives and foreign scopes, and retention of the pipeline that kept them."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard

from config.artifacts import ArtifactSpec
from config.pipeline import pipeline_from_dict
from config.schema import encode
from config.settings import RetentionSettings, Settings
from runner.archive import ArchiveWriter
from runner.artifacts import ArtifactManager, collect, glob_regex
from runner.artifacts.indexer import TarIndexer
from runner.artifacts.read import member_chunks
from runner.layout import DataLayout
from runner.maintenance import DAY, MaintenanceParts, prune
from runner.models import Job, JobSpec, JobState
from runner.podman_user import PodmanUser
from runner.queue import ArtifactRecord, PlannedJobRow, Queue
from runner.store import FileStore

NOW = 1_800_000_000.0


def tree(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return root


# -- globs --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "path", "matches"), [
    ("dist/*.whl", "dist/app-1.0.whl", True),
    ("dist/*.whl", "dist/sub/app.whl", False),  # `*` never crosses a folder
    ("reports/**", "reports/a/b/c.xml", True),
    ("**/*.xml", "coverage.xml", True),  # `**` is any number of folders, none too
    ("**/*.xml", "a/b/junit.xml", True),
    ("a/**/z.txt", "a/z.txt", True),
    ("a/**/z.txt", "a/b/c/z.txt", True),
    ("log?.txt", "log1.txt", True),
    ("log?.txt", "log/.txt", False),
    ("[!a]*.txt", "b.txt", True),
    ("[!a]*.txt", "a.txt", False),
    ("coverage.xml", "coverage.xml", True),
    ("coverage.xml", "coverageXxml", False),  # `.` is literal
])
def test_globs(pattern: str, path: str, matches: bool) -> None:
    assert bool(glob_regex(pattern).fullmatch(path)) is matches


def test_collect_keeps_matched_files_and_whole_matched_folders(tmp_path: Path) -> None:
    root = tree(tmp_path / "ws", {"dist/a.whl": "a", "dist/b.tar.gz": "b", "reports/x/1.html": "11",
                                  "reports/2.html": "2", "coverage.xml": "c", "src/main.py": "m"})
    found = collect(root, ["dist/*.whl", "reports", "coverage.xml", "nothing/*"])
    assert found.files == {"dist/a.whl": 1, "reports/x/1.html": 2, "reports/2.html": 1, "coverage.xml": 1}
    assert found.unmatched == ["nothing/*"] and found.problems == []
    assert found.entries() == ["dist", "reports", "reports/x", "coverage.xml", "dist/a.whl", "reports/2.html",
                               "reports/x/1.html"]


def test_collect_never_leaves_the_workspace_through_a_link(tmp_path: Path) -> None:
    outside = tree(tmp_path / "outside", {"secret.txt": "s"})
    root = tree(tmp_path / "ws", {"dist/app.bin": "app", "real/inner.txt": "i"})
    (root / "dist" / "passwd").symlink_to("/etc/passwd")
    (root / "dist" / "up").symlink_to("../../outside/secret.txt")
    (root / "dist" / "inside").symlink_to("../real/inner.txt")  # a link to a file of the workspace: its contents
    (root / "dist" / "folder").symlink_to(outside)
    (root / "linked").symlink_to(outside)
    found = collect(root, ["dist/**", "linked/*", "**/secret.txt"])
    assert found.files == {"dist/app.bin": 3, "dist/inside": 1}
    assert sorted(found.problems) == [
        f"left out dist/folder: a symbolic link to {outside}, outside the workspace",
        "left out dist/passwd: a symbolic link to /etc/passwd, outside the workspace",
        "left out dist/up: a symbolic link to ../../outside/secret.txt, outside the workspace",
        "linked/*: linked is a symbolic link; not followed"]
    assert found.unmatched == ["linked/*", "**/secret.txt"]


def test_the_tar_index_hashes_every_file_with_long_names_and_empty_ones(tmp_path: Path) -> None:
    long = "d" * 120 + "/" + "f" * 150 + ".txt"
    files: dict[str, str | bytes] = {long: "long name", "empty": b"", "big.bin": os.urandom(3 << 20), "dir/x": "x"}
    root = tree(tmp_path / "ws", files)
    (root / "link").symlink_to("big.bin")
    found = collect(root, ["**"])
    indexer = TarIndexer()
    with ArchiveWriter(root, found.entries(), listed=True, tap=indexer) as writer:
        while writer.read(1 << 16):
            pass
    assert indexer.ended
    expected = {rel: hashlib.sha256(data if isinstance(data, bytes) else data.encode()).hexdigest()
                for rel, data in files.items()}
    expected["link"] = expected["big.bin"]  # stored as the file it points at
    assert {f.path: f.sha256 for f in indexer.files} == expected
    assert {f.path: f.size for f in indexer.files}["big.bin"] == 3 << 20


# -- upload, restore ----------------------------------------------------------------------------------------------


class World:
    """A queue, a file store and a pipeline of two jobs (build -> publish), as planning writes them."""

    def __init__(self, tmp_path: Path, *, build: ArtifactSpec | None, max_size: int = 1 << 30,
                 pr_number: int | None = None) -> None:
        self.now = NOW
        self.queue = Queue(tmp_path / "queue.db", clock=lambda: self.now)
        self.store = FileStore(tmp_path / "store")
        self.manager = ArtifactManager(self.store, self.queue, PodmanUser.current(), max_size=max_size,
                                       default_days=7, clock=lambda: self.now)
        spec = JobSpec(repo="https://git.example.test/acme/app.git", ref="refs/heads/main", sha="a" * 40,
                       pr_number=pr_number, base_ref="main" if pr_number else None, fork=pr_number is not None)
        self.pipeline_id = self.queue.create_pipeline(spec)
        build_table = {"steps": [{"run": "build"}]}
        if build is not None:
            build_table["artifacts"] = encode(build)  # type: ignore[assignment]
        rows = [PlannedJobRow(spec=replace(spec, pipeline={"name": "build", **build_table}), name="build",
                              display="build"),
                PlannedJobRow(spec=replace(spec, pipeline={"name": "publish", "steps": [{"run": "publish"}]}),
                              name="publish", display="publish", needs=("build",))]
        self.ids, _ = self.queue.write_plan(self.pipeline_id, spec.sha, rows)
        self.logs: list[str] = []

    def say(self, text: str) -> None:
        self.logs.append(text)

    def job(self, job_id: int) -> Job:
        return self.queue.get(job_id)

    def run_build(self, workspace: Path, state: JobState = JobState.success) -> ArtifactRecord | None:
        job = self.queue.claim("r", 60)
        assert job is not None and job.id == self.ids[0]
        record = self.manager.upload(job, pipeline_from_dict(job.spec.pipeline, "p"), workspace, state, self.say)
        self.queue.complete(job.id, state, runner_id="r")
        return record

    def restore(self, workspace: Path) -> object:
        job = self.queue.claim("r", 60)
        assert job is not None and job.id == self.ids[1]
        return self.manager.restore(job, pipeline_from_dict(job.spec.pipeline, "p"), workspace, self.say)


def test_upload_indexes_every_file_and_restore_brings_them_back(tmp_path: Path) -> None:
    world = World(tmp_path, build=ArtifactSpec(paths=("dist/*",)))
    blob = os.urandom(3_000_000)
    record = world.run_build(tree(tmp_path / "ws1", {"dist/app.bin": blob, "dist/notes.txt": "n"}))
    assert record is not None and record.state == "kept" and record.file_count == 2
    assert record.expires_at == NOW + 7 * DAY and record.scope == "main"
    assert {f.path: f.sha256 for f in record.files}["dist/app.bin"] == hashlib.sha256(blob).hexdigest()
    target = tree(tmp_path / "ws2", {"dist/notes.txt": "the checkout's own", "src/x.py": "x"})
    assert world.restore(target) is None
    assert (target / "dist" / "app.bin").read_bytes() == blob
    assert (target / "dist" / "notes.txt").read_text() == "n" and (target / "src" / "x.py").exists()
    assert not [p for p in target.iterdir() if p.name.startswith(".forgeci")]  # the staging folder went
    assert any(line.startswith("artifacts: fetched 2 files of job build") for line in world.logs)
    assert b"".join(member_chunks(world.store, record, "dist/app.bin")) == blob


def test_over_the_size_limit_nothing_is_kept_and_the_dependant_fails_naming_it(tmp_path: Path) -> None:
    world = World(tmp_path, build=ArtifactSpec(paths=("dist",)), max_size=1000)
    record = world.run_build(tree(tmp_path / "ws1", {"dist/app.bin": os.urandom(2000)}))
    assert record is not None and record.state == "not kept" and list(world.store.list("artifacts/")) == []
    assert "artifacts: not kept: 2.0 kB in 1 files is over runner.max_artifact_size (1.0 kB)" in world.logs
    outcome = world.restore(tmp_path / "ws2")
    assert outcome is not None and outcome.state is JobState.failure  # type: ignore[attr-defined]
    assert outcome.error == ("the artifacts of job build (dist) were not kept: 2.0 kB in 1 files is over "  # type: ignore[attr-defined]
                             "runner.max_artifact_size (1.0 kB)")


def test_matching_nothing_is_a_warning_and_the_dependant_goes_on(tmp_path: Path) -> None:
    world = World(tmp_path, build=ArtifactSpec(paths=("dist/*.whl",)))
    record = world.run_build(tree(tmp_path / "ws1", {"src/x": "x"}))
    assert record is not None and record.state == "empty"
    assert "artifacts: warning: 'dist/*.whl' matched nothing" in world.logs
    (tmp_path / "ws2").mkdir()
    assert world.restore(tmp_path / "ws2") is None
    assert "artifacts: job build kept none (its paths matched nothing)" in world.logs


def test_when_failure_keeps_nothing_for_a_success(tmp_path: Path) -> None:
    world = World(tmp_path, build=ArtifactSpec(paths=("reports",), when="failure"))
    assert world.run_build(tree(tmp_path / "ws1", {"reports/r.xml": "r"})) is None
    assert 'artifacts: none kept: the job ended success, and `when = "failure"`' in world.logs
    (tmp_path / "ws2").mkdir()
    assert world.restore(tmp_path / "ws2") is None
    assert "artifacts: job build ended success and keeps artifacts only when it fails; nothing to fetch from it" in \
        world.logs


def hostile_archive(members: list[tuple[str, bytes | None, str | None]]) -> bytes:
    """A tar.zst with members (name, data, symlink target) written by Python's tarfile, no checks at all."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                info.size = len(data or b"")
                tar.addfile(info, io.BytesIO(data or b""))
    return zstandard.ZstdCompressor().compress(raw.getvalue())


@pytest.mark.parametrize("members", [
    [("../escaped.txt", b"x", None)],
    [("/tmp/absolute.txt", b"x", None)],
    [("dist/passwd", None, "/etc/passwd"), ("dist/passwd", b"x", None)],
    [("dist/up", None, "../../.."), ("dist/up/escaped.txt", b"x", None)],
])
def test_a_hostile_artifact_archive_is_refused_on_restore(tmp_path: Path,
                                                          members: list[tuple[str, bytes | None, str | None]]) -> None:
    world = World(tmp_path, build=ArtifactSpec(paths=("dist",)))
    record = world.run_build(tree(tmp_path / "ws1", {"dist/app.bin": "ok"}))
    assert record is not None and record.object is not None
    data = hostile_archive(members)
    world.store.put_stream(record.object, io.BytesIO(data))
    with world.queue._transaction() as conn:  # as if the index had been written for these bytes
        conn.execute("UPDATE artifacts SET checksum = ? WHERE id = ?", (hashlib.sha256(data).hexdigest(), record.id))
    target = tmp_path / "deep" / "ws2"
    target.mkdir(parents=True)
    outcome = world.restore(target)
    assert outcome is not None and outcome.state is JobState.failure  # type: ignore[attr-defined]
    assert outcome.error.startswith("the artifacts of job build were refused: refused member")  # type: ignore[attr-defined]
    assert not (tmp_path / "deep" / "escaped.txt").exists() and not Path("/tmp/absolute.txt").exists()
    assert not (tmp_path / "escaped.txt").exists() and os.listdir(target) == []


def test_a_damaged_archive_is_refused_by_its_checksum(tmp_path: Path) -> None:
    world = World(tmp_path, build=ArtifactSpec(paths=("dist",)))
    record = world.run_build(tree(tmp_path / "ws1", {"dist/app.bin": "ok"}))
    assert record is not None and record.object is not None
    world.store.put_stream(record.object, io.BytesIO(hostile_archive([("dist/app.bin", b"forged", None)])))
    (tmp_path / "ws2").mkdir()
    outcome = world.restore(tmp_path / "ws2")
    assert outcome is not None and "checksum mismatch" in outcome.error  # type: ignore[attr-defined]
    assert os.listdir(tmp_path / "ws2") == []


def test_a_link_in_the_checkout_where_a_folder_goes_stops_the_restore(tmp_path: Path) -> None:
    world = World(tmp_path, build=ArtifactSpec(paths=("dist",)))
    world.run_build(tree(tmp_path / "ws1", {"dist/app.bin": "ok"}))
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "ws2"
    target.mkdir()
    (target / "dist").symlink_to(outside)  # a repository may commit any link
    outcome = world.restore(target)
    assert outcome is not None and outcome.state is JobState.failure  # type: ignore[attr-defined]
    assert "is not a folder (a link?)" in outcome.error and os.listdir(outside) == []  # type: ignore[attr-defined]


def test_a_fork_prs_artifacts_stay_in_its_scope(tmp_path: Path) -> None:
    world = World(tmp_path, build=ArtifactSpec(paths=("dist",)), pr_number=7)
    record = world.run_build(tree(tmp_path / "ws1", {"dist/app.bin": "from a fork"}))
    assert record is not None and record.scope == "pull~7" and "/pull~7/" in (record.object or "")
    with world.queue._transaction() as conn:  # a job of the base branch must never see it: say the row were main's
        conn.execute("UPDATE artifacts SET scope = 'main' WHERE id = ?", (record.id,))
    (tmp_path / "ws2").mkdir()
    outcome = world.restore(tmp_path / "ws2")
    assert outcome is not None and outcome.state is JobState.failure  # type: ignore[attr-defined]
    assert outcome.error == ("the artifacts of job build belong to git.example.test/acme/app scope main; not "  # type: ignore[attr-defined]
                             "restored into a job of scope pull~7")
    assert os.listdir(tmp_path / "ws2") == []


def test_a_later_attempt_replaces_the_earlier_attempts_artifact(tmp_path: Path) -> None:
    world = World(tmp_path, build=ArtifactSpec(paths=("dist",)))
    job = world.queue.claim("r", 60)
    assert job is not None
    pipeline = pipeline_from_dict(job.spec.pipeline, "p")
    first = world.manager.upload(job, pipeline, tree(tmp_path / "a", {"dist/1": "1"}), JobState.success, world.say)
    second = world.manager.upload(job, pipeline, tree(tmp_path / "b", {"dist/2": "2"}), JobState.success, world.say)
    assert first is not None and second is not None
    assert [o.key for o in world.store.list("artifacts/")] == [second.object]
    assert [r.id for r in world.queue.artifacts_of(job_id=job.id)] == [second.id]
    assert world.manager.upload(job, pipeline, tmp_path / "b", JobState.cancelled, world.say) is None
    assert world.queue.artifacts_of(job_id=job.id) == [] and list(world.store.list("artifacts/")) == []


def test_an_aborted_upload_keeps_nothing(tmp_path: Path) -> None:
    world = World(tmp_path, build=ArtifactSpec(paths=("dist",)))
    job = world.queue.claim("r", 60)
    assert job is not None
    abort = threading.Event()
    abort.set()
    record = world.manager.upload(job, pipeline_from_dict(job.spec.pipeline, "p"),
                                  tree(tmp_path / "a", {"dist/1": "1"}), JobState.success, world.say, abort)
    assert record is None and "artifacts: upload cancelled" in world.logs
    assert list(world.store.list("artifacts/")) == []


# -- retention ------------------------------------------------------------------------------------------------------


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[World, MaintenanceParts]]:
    world = World(tmp_path, build=ArtifactSpec(paths=("dist",), expire=30 * DAY))
    settings = replace(Settings.default(), data_dir=tmp_path / "data",
                       retention=RetentionSettings(job_days=7, artifact_days=7))
    yield world, MaintenanceParts(settings, DataLayout(settings.data_dir), world.queue, world.store)
    world.queue.close()


def test_the_pipeline_stays_while_its_artifacts_live_and_goes_after(parts: tuple[World, MaintenanceParts],
                                                                    tmp_path: Path) -> None:
    world, maintenance = parts
    record = world.run_build(tree(tmp_path / "ws1", {"dist/app.bin": "ok"}))
    job = world.queue.claim("r", 60)
    assert job is not None and record is not None
    world.queue.complete(job.id, JobState.success, runner_id="r")
    world.queue.create_pipeline(JobSpec(repo="x", ref="main"))  # never prune the newest pipeline: a later one
    world.queue.enqueue(JobSpec(repo="x", ref="main"))  # and a newer job, so both of ours may go
    report = prune(maintenance, NOW + 10 * DAY)  # past job_days, before the artifact's own 30 days
    assert report.jobs == 2 and report.artifacts == 0
    assert world.queue.pipeline(world.pipeline_id).state == "success"  # its row stays, its jobs went
    assert [r.id for r in world.queue.artifacts_of(pipeline_id=world.pipeline_id)] == [record.id]
    assert [o.key for o in world.store.list("artifacts/")] == [record.object]
    report = prune(maintenance, NOW + 31 * DAY)
    assert report.artifacts == 1 and report.freed_bytes >= record.size
    assert list(world.store.list("artifacts/")) == [] and world.queue.artifact(record.id) is None
    with pytest.raises(Exception, match="not found"):
        world.queue.pipeline(world.pipeline_id)
