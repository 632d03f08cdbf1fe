"""Job images built from a repository's Containerfile, on real rootless Podman: used, reused, rebuilt from the layer
cache, failing as the pipeline's fault, exported to the store and imported by a second Podman storage, pruned."""

from __future__ import annotations

import asyncio
import io
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from config.images import ImageBuild
from config.settings import Settings
from runner.image_build import (
    BUILT_LABEL,
    REPOSITORY,
    BuildLog,
    ImageBuilder,
    store_key,
)
from runner.local import run_local
from runner.maintenance import prune
from runner.models import JobSpec, JobState
from runner.podman_user import PodmanUser
from runner.runtime import Runtime
from runner.store import FileStore
from tests.conftest import git
from tests.runner.test_executor import log_text, submit, wait_terminal

pytestmark = [pytest.mark.slow, pytest.mark.podman]

MakeRepo = Callable[..., tuple[Path, str]]


def containerfile(base: str, token: str, last: str = "two") -> str:
    return (f"FROM {base}\n"
            f"RUN echo {token} > /etc/token\n"
            "COPY hello.txt /etc/hello.txt\n"
            f"RUN echo {last} > /etc/last\n")


PIPELINE = """image = { containerfile = "ci/Containerfile", context = "ci" }
[[steps]]
name = "show"
run = "cat /etc/token /etc/hello.txt /etc/last"
"""


def built_tags(user: PodmanUser, token: str) -> list[str]:
    """This test's images: built ones carry the label, and their Containerfile the test's token."""
    listing = user.run(["podman", "images", "--filter", f"label={BUILT_LABEL}=1", "--format",
                        "{{.Repository}}:{{.Tag}} {{.Id}}"], check=False).stdout.decode().splitlines()
    found = []
    for line in listing:
        tag, _, image_id = line.partition(" ")
        probe = user.run(["podman", "run", "--rm", "--network", "none", image_id, "cat", "/etc/token"], check=False)
        if probe.stdout.decode().strip() == token:
            found.append(tag)
    return found


@pytest.fixture
def token(podman_user: PodmanUser) -> Iterator[str]:
    """A word unique to this test in its Containerfiles: no image of another run matches; its images go after."""
    value = f"t{uuid.uuid4().hex[:12]}"
    yield value
    for tag in built_tags(podman_user, value):
        podman_user.run(["podman", "rmi", "-f", tag], check=False)


async def test_a_built_image_is_used_reused_and_rebuilt_from_its_cached_layers(
    runtime: Runtime, make_repo: MakeRepo, busybox_image: str, token: str
) -> None:
    repo, _ = make_repo({".forgeci.toml": PIPELINE, "ci/Containerfile": containerfile(busybox_image, token),
                         "ci/hello.txt": "hello from the context\n", "ci/.containerignore": "junk\n"})
    first = await wait_terminal(runtime, submit(runtime, repo), timeout=180)
    text = log_text(runtime, first.id)
    assert first.state is JobState.success, text
    assert "image: building localhost/forgeci-built:" in text and "STEP 1/" in text, text
    assert f"{token}\nhello from the context\ntwo" in text
    assert "image: built localhost/forgeci-built:" in text and " in " in text.split("image: built ")[1]

    # Same inputs: the next job uses the image, with no build in its log. A file the ignore file leaves out
    # changes nothing.
    (repo / "ci" / "junk").write_text("ignored\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "junk")
    second = await wait_terminal(runtime, submit(runtime, repo), timeout=120)
    text2 = log_text(runtime, second.id)
    assert second.state is JobState.success, text2
    assert "is already built" in text2 and "STEP " not in text2 and "image: building" not in text2

    # A change of the last RUN line: a new image, its earlier layers from Podman's cache.
    (repo / "ci" / "Containerfile").write_text(containerfile(busybox_image, token, last="three"))
    git(repo, "commit", "-qam", "late line")
    third = await wait_terminal(runtime, submit(runtime, repo), timeout=180)
    text3 = log_text(runtime, third.id)
    assert third.state is JobState.success, text3
    assert "image: building" in text3 and f"{token}\nhello from the context\nthree" in text3
    before_last = text3.split("RUN echo three")[0]
    assert before_last.count("--> Using cache") >= 2, text3  # the token RUN and the COPY
    assert "--> Using cache" not in text3.split("RUN echo three")[1].split("COMMIT")[0]
    tags = built_tags(runtime.user, token)
    assert len(tags) == 2 and all(tag.startswith(f"{REPOSITORY}:") for tag in tags)
    # The trusted builds were exported to the store under their hash.
    assert len(list(runtime.store.list("images/"))) == 2

    # The hourly maintenance, a month later: both images and their exports go; the base image stays.
    report = prune(runtime, now=time.time() + 30 * 86400)
    assert report.images == 2 and report.errors == (), report
    assert built_tags(runtime.user, token) == [] and list(runtime.store.list("images/")) == []
    assert runtime.images.image_id(busybox_image) != ""


async def test_a_failing_build_fails_the_job_without_a_retry_and_logs_the_output(
    runtime: Runtime, make_repo: MakeRepo, busybox_image: str, token: str
) -> None:
    broken = f"FROM {busybox_image}\nRUN echo {token}-says-no && exit 3\n"
    repo, _ = make_repo({".forgeci.toml": PIPELINE, "ci/Containerfile": broken, "ci/hello.txt": "x\n"})
    job = await wait_terminal(runtime, submit(runtime, repo), timeout=120)
    text = log_text(runtime, job.id)
    assert job.state is JobState.failure and job.attempts == 1, text
    assert "image build failed (exit" in (job.error or "")
    assert f"{token}-says-no" in text and "image: build failed after" in text
    assert "step 1/1" not in text  # no step ran

    missing = f"FROM localhost/forgeci-no-such-base:{token}\nRUN true\n"
    repo2, _ = make_repo({".forgeci.toml": PIPELINE, "ci/Containerfile": missing, "ci/hello.txt": "x\n"})
    job2 = await wait_terminal(runtime, submit(runtime, repo2), timeout=60)
    assert job2.state is JobState.failure and "does not exist on this runner" in (job2.error or "")
    repo3, _ = make_repo({".forgeci.toml": PIPELINE.replace("ci/Containerfile", "ci/Nope"), "ci/hello.txt": "x\n"})
    job3 = await wait_terminal(runtime, submit(runtime, repo3), timeout=60)
    assert job3.state is JobState.failure and "has no file ci/Nope" in (job3.error or "")
    repo4, _ = make_repo({".forgeci.toml": PIPELINE, "ci/Containerfile": "FROM $UNSET\nRUN true\n"})
    job4 = await wait_terminal(runtime, submit(runtime, repo4), timeout=60)
    assert job4.state is JobState.failure and "FROM '$UNSET' is not an image name" in (job4.error or "")
    assert [job.attempts for job in (job2, job3, job4)] == [1, 1, 1]


class Collected:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.output = bytearray()

    @property
    def log(self) -> BuildLog:
        return BuildLog(self.lines.append, self.output.extend)

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n" + self.output.decode(errors="replace")


@pytest.fixture
def second_storage(podman_user: PodmanUser, shared_dir: Path, busybox_image: str) -> Iterator[tuple[str, ...]]:
    """An empty Podman storage of its own (--root/--runroot) holding only the busybox base (same id, by save/load)."""
    root = shared_dir / "podman2"
    root.mkdir()
    podman_user.chown(root)
    storage = ("--root", str(root / "root"), "--runroot", str(root / "run"))
    saved = root / "base.tar"
    podman_user.run(["podman", "save", "-o", str(saved), busybox_image])
    podman_user.run(["podman", *storage, "load", "-q", "-i", str(saved)])
    yield storage
    podman_user.run(["podman", *storage, "rmi", "-a", "-f"], check=False)


def workspace_with(shared_dir: Path, user: PodmanUser, name: str, files: dict[str, str]) -> Path:
    workspace = shared_dir / name
    for rel, text in files.items():
        (workspace / rel).parent.mkdir(parents=True, exist_ok=True)
        (workspace / rel).write_text(text)
    for path in [workspace, *workspace.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o055)
    return workspace


async def test_an_image_exported_by_one_storage_is_imported_not_rebuilt_by_a_second(
    podman_user: PodmanUser, shared_dir: Path, busybox_image: str, token: str, second_storage: tuple[str, ...]
) -> None:
    store = FileStore(shared_dir / "store")
    files = {"ci/Containerfile": containerfile(busybox_image, token), "ci/hello.txt": "hi\n"}
    build = ImageBuild(containerfile="ci/Containerfile", context="ci")
    spec = JobSpec(repo="https://forge.example/acme/app.git", ref="refs/heads/main")
    first = ImageBuilder(podman_user, shared_dir / "state1", store, network="none")
    one = Collected()
    tag = await first.resolve(build, workspace_with(shared_dir, podman_user, "ws1", files), spec, one.log,
                              asyncio.Event())
    assert "STEP 1/" in one.text and "exported" in one.text, one.text
    digest = tag.rpartition(":")[2]
    assert store.stat(store_key(digest)).size > 0

    second = ImageBuilder(podman_user, shared_dir / "state2", store, storage=second_storage, network="none")
    assert second.image_id(tag) == ""
    two = Collected()
    again = await second.resolve(build, workspace_with(shared_dir, podman_user, "ws2", files), spec, two.log,
                                 asyncio.Event())
    assert again == tag and "imported" in two.text and "STEP" not in two.text, two.text
    assert second.image_id(tag) == first.image_id(tag)
    ran = podman_user.run(["podman", *second_storage, "run", "--rm", "--network", "none", tag, "cat", "/etc/token"])
    assert ran.stdout.decode().strip() == token

    # A fork's pull request uses the trusted image when it has the same inputs, but what it builds goes to a
    # tag of its own scope and never to the store.
    fork = JobSpec(repo="https://forge.example/acme/app.git", ref="refs/pull/7/head", fork=True, pr_number=7)
    three = Collected()
    assert await first.resolve(build, workspace_with(shared_dir, podman_user, "ws3", files), fork, three.log,
                               asyncio.Event()) == tag
    changed = {**files, "ci/hello.txt": "a fork's change\n"}
    four = Collected()
    own = await first.resolve(build, workspace_with(shared_dir, podman_user, "ws4", changed), fork, four.log,
                              asyncio.Event())
    assert own.startswith("localhost/forgeci-fork-") and "STEP 1/" in four.text
    assert store_key(own.rpartition(":")[2]) not in {obj.key for obj in store.list("images/")}
    assert first.image_id(f"{REPOSITORY}:{own.rpartition(':')[2]}") == ""


async def test_pruning_removes_only_built_images_unused_for_image_days(
    podman_user: PodmanUser, shared_dir: Path, busybox_image: str, token: str
) -> None:
    store = FileStore(shared_dir / "store")
    builder = ImageBuilder(podman_user, shared_dir / "state", store, network="none")
    spec = JobSpec(repo="https://forge.example/acme/app.git", ref="refs/heads/main")
    tags = []
    for last in ("old", "fresh"):
        files = {"ci/Containerfile": containerfile(busybox_image, token, last), "ci/hello.txt": "hi\n"}
        tags.append(await builder.resolve(ImageBuild(containerfile="ci/Containerfile", context="ci"),
                                          workspace_with(shared_dir, podman_user, f"ws-{last}", files), spec,
                                          Collected().log, asyncio.Event()))
    old, fresh = tags
    builder.touch(busybox_image, "")  # a use record of an image forgeci did not build: never removed
    now = time.time()
    for marker in builder.state_dir.iterdir():
        if marker.read_text().split("\n")[0] != fresh:
            os.utime(marker, (now - 20 * 86400, now - 20 * 86400))
    count, errors = builder.prune(now, 14)
    assert (count, errors) == (1, [])
    assert builder.image_id(old) == "" and builder.image_id(fresh) != "" and builder.image_id(busybox_image) != ""
    assert {obj.key for obj in store.list("images/")} == {store_key(fresh.rpartition(":")[2])}
    assert builder.prune(now + 30 * 86400, 14)[0] == 1 and builder.image_id(busybox_image) != ""


async def test_forgeci_run_builds_from_the_working_tree_and_records_the_use_in_the_data_dir(
    settings: Settings, make_repo: MakeRepo, busybox_image: str, token: str
) -> None:
    repo, _ = make_repo({".forgeci.toml": PIPELINE, "ci/Containerfile": containerfile(busybox_image, token),
                         "ci/hello.txt": "committed\n"})
    (repo / "ci" / "hello.txt").write_text("uncommitted\n")
    out = io.StringIO()
    run = await run_local(settings, repo, environ={}, out=out)
    text = out.getvalue()
    assert run.succeeded, text
    assert "image: building" in text and "[image build] STEP 1/" in text and "[show] uncommitted" in text, text
    markers = list((settings.data_dir / "images").iterdir())  # the real data dir's, which maintenance prunes
    assert len(markers) == 1 and markers[0].read_text().startswith(f"{REPOSITORY}:")


async def test_a_cancel_stops_the_build_and_leaves_no_build_process(
    runtime: Runtime, make_repo: MakeRepo, busybox_image: str, token: str
) -> None:
    slow = f"FROM {busybox_image}\nRUN echo {token}-building && sh -c 'sleep 600; echo {token}'\n"
    repo, _ = make_repo({".forgeci.toml": PIPELINE, "ci/Containerfile": slow, "ci/hello.txt": "x\n"})
    before = set(runtime.images.working_containers())
    job_id = submit(runtime, repo)
    deadline = time.monotonic() + 60
    while f"{token}-building" not in log_text(runtime, job_id) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert runtime.queue.cancel(job_id) is JobState.running
    t0 = time.monotonic()
    job = await wait_terminal(runtime, job_id, timeout=60)
    assert job.state is JobState.cancelled and "cancelled during the image build" in (job.error or "")
    assert time.monotonic() - t0 < 30
    builds = [p for p in Path("/proc").iterdir() if p.name.isdigit() and token.encode() in _cmdline(p)]
    assert builds == []  # the RUN line's processes too, which a signalled `podman build` leaves running
    assert set(runtime.images.working_containers()) - before == set()  # and Podman's build container


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""
