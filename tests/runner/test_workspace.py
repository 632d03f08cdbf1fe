"""Workspaces against real git, the real Podman user (root delegates to it) and rootless `podman unshare`."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runner.errors import RunnerError
from runner.podman_user import PodmanUser
from runner.workspace import WorkspaceError, Workspaces

PODMAN_USER = "forgeci"
TOKEN = "ghp_FAKEtoken0123456789abcdefSECRET"
REPO_ROOT = Path(__file__).resolve().parents[2]


class Repo:
    """A small git repository owned by the test (root here), readable by everyone."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        self.git("init", "--quiet", "--initial-branch=main")

    def git(self, *args: str) -> str:
        return git(self.path, *args)

    def commit(self, files: dict[str, str], message: str = "change") -> str:
        for name, text in files.items():
            (self.path / name).parent.mkdir(parents=True, exist_ok=True)
            (self.path / name).write_text(text)
        self.git("add", "--all")
        self.git("commit", "--quiet", "-m", message)
        return self.git("rev-parse", "HEAD")


def git(where: Path, *args: str) -> str:
    """git as the test's user; workspaces belong to the Podman user, so ownership checks are off, and it never
    writes there (a `git status` would rewrite the index as root)."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    argv = ["git", "--no-optional-locks", "-c", "safe.directory=*", "-C", str(where), *args]
    return subprocess.run(argv, check=True, env=env, capture_output=True, text=True).stdout.rstrip()


def owners(path: Path) -> set[int]:
    found = {path.lstat().st_uid}
    for folder, dirs, files in os.walk(path):
        found |= {os.lstat(os.path.join(folder, name)).st_uid for name in dirs + files}
    return found


@pytest.fixture
def user() -> PodmanUser:
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: run scripts/setup")
    try:
        return PodmanUser.resolve(PODMAN_USER)
    except RunnerError as exc:
        pytest.fail(f"{exc} (the tests need the rootless Podman user: run scripts/setup)")


@pytest.fixture
def base() -> Iterator[Path]:
    # Not tmp_path: /tmp/pytest-of-root is 0700, so the Podman user could not reach anything below it.
    path = Path(tempfile.mkdtemp(prefix="forgeci-ws-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)  # root also deletes what containers left under subuids


@pytest.fixture
def workspaces(base: Path, user: PodmanUser) -> Workspaces:
    return Workspaces(base / "data" / "workspaces", base / "data" / "mirrors", user)


@pytest.fixture
def origin(base: Path) -> Repo:
    return Repo(base / "origin")


class Said(list[str]):
    def __call__(self, message: str) -> None:
        self.append(message)

    def has(self, text: str) -> bool:
        return any(text in message for message in self)


async def test_the_exact_sha_is_checked_out_detached_not_the_branch_tip(workspaces: Workspaces, origin: Repo) -> None:
    first = origin.commit({"a.txt": "one"})
    origin.commit({"a.txt": "two"})
    said = Said()
    path = await workspaces.prepare(1, str(origin.path), "main", first, said)
    assert path == workspaces.root / "1"
    assert git(path, "rev-parse", "HEAD") == first
    assert (path / "a.txt").read_text() == "one"
    assert subprocess.run(["git", "-c", "safe.directory=*", "-C", str(path), "symbolic-ref", "-q", "HEAD"]
                          ).returncode != 0  # detached
    assert git(path, "remote", "get-url", "origin") == str(origin.path)
    assert git(path, "status", "--porcelain") == ""
    assert said.has("mirror miss") and said.has(first[:12])


async def test_a_tag_ref_without_sha_checks_out_the_tagged_commit(workspaces: Workspaces, origin: Repo) -> None:
    tagged = origin.commit({"a.txt": "release"})
    origin.git("tag", "-a", "v1.0", "-m", "release 1.0")
    origin.git("tag", "light", tagged)
    origin.commit({"a.txt": "later"})
    annotated = await workspaces.prepare(1, str(origin.path), "v1.0", None, Said())
    light = await workspaces.prepare(2, str(origin.path), "refs/tags/light", None, Said())
    assert git(annotated, "rev-parse", "HEAD") == tagged  # peeled: the commit, not the tag object
    assert git(light, "rev-parse", "HEAD") == tagged


async def test_sha_none_resolves_the_branch_tip_from_a_file_url(workspaces: Workspaces, origin: Repo) -> None:
    origin.commit({"a.txt": "one"})
    origin.git("checkout", "--quiet", "-b", "feature")
    tip = origin.commit({"b.txt": "feature work"})
    origin.git("checkout", "--quiet", "main")
    said = Said()
    path = await workspaces.prepare(1, f"file://{origin.path}", "feature", None, said)
    assert git(path, "rev-parse", "HEAD") == tip
    assert (path / "b.txt").read_text() == "feature work"
    assert git(path, "remote", "get-url", "origin") == f"file://{origin.path}"


async def test_a_second_job_reuses_the_mirror_and_fetches_new_commits(workspaces: Workspaces, origin: Repo) -> None:
    origin.commit({f"f{n}.txt": f"file {n}" for n in range(20)})
    first = await workspaces.prepare(1, str(origin.path), "main", None, said1 := Said())
    newer = origin.commit({"f0.txt": "changed"})
    second = await workspaces.prepare(2, str(origin.path), "main", newer, said2 := Said())
    again = await workspaces.prepare(3, str(origin.path), "main", newer, said3 := Said())

    assert said1.has("mirror miss")
    assert said2.has("mirror hit") and not said2.has("mirror miss")
    assert said3.has("already in the mirror") and not said3.has("fetching")
    assert len(list(workspaces.mirrors.glob("*.git"))) == 1
    assert (first / "f0.txt").read_text() == "file 0"
    assert git(second, "rev-parse", "HEAD") == newer and (second / "f0.txt").read_text() == "changed"
    assert git(again, "rev-parse", "HEAD") == newer


async def test_concurrent_jobs_of_one_repository_share_one_fetch(workspaces: Workspaces, origin: Repo) -> None:
    sha = origin.commit({"a.txt": "one"})
    said = [Said() for _ in range(3)]
    paths = await asyncio.gather(*(workspaces.prepare(n, str(origin.path), "main", sha, said[n]) for n in range(3)))
    assert [git(p, "rev-parse", "HEAD") for p in paths] == [sha] * 3
    assert sum(s.has("mirror miss") for s in said) == 1
    assert sum(s.has("already in the mirror") for s in said) == 2


async def test_the_mirror_lock_is_a_file_lock_other_processes_respect(workspaces: Workspaces, origin: Repo) -> None:
    sha = origin.commit({"a.txt": "one"})
    # Another forgeci process holding the lock: flock locks belong to open files, so a second descriptor conflicts.
    lock = workspaces.mirrors / f"{hashlib.sha256(str(origin.path).encode()).hexdigest()[:16]}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    task = asyncio.create_task(workspaces.prepare(1, str(origin.path), "main", sha, Said()))
    try:
        await asyncio.sleep(1.0)
        assert not task.done()
        assert not (workspaces.mirrors / lock.name.replace(".lock", ".git")).exists()
    finally:
        os.close(fd)
    path = await asyncio.wait_for(task, 60)
    assert git(path, "rev-parse", "HEAD") == sha


async def test_workspace_and_folders_belong_to_the_podman_user(
    workspaces: Workspaces, origin: Repo, user: PodmanUser
) -> None:
    origin.commit({"a.txt": "one", "dir/b.txt": "two"})
    path = await workspaces.prepare(1, str(origin.path), "main", None, Said())
    assert owners(path) == {user.uid}
    assert workspaces.root.stat().st_uid == user.uid
    assert owners(workspaces.mirrors) == {user.uid}


async def test_a_missing_repository_is_an_infrastructure_fault(workspaces: Workspaces, base: Path) -> None:
    missing = base / "no-such-repo"
    with pytest.raises(WorkspaceError) as caught:
        await workspaces.prepare(1, str(missing), "main", None, Said())
    assert str(missing) in str(caught.value)
    assert caught.value.infra is True
    assert not (workspaces.root / "1").exists()


async def test_a_missing_sha_is_not_an_infrastructure_fault(workspaces: Workspaces, origin: Repo) -> None:
    origin.commit({"a.txt": "one"})
    absent = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(WorkspaceError) as caught:
        await workspaces.prepare(1, str(origin.path), "main", absent, Said())
    assert absent in str(caught.value) and str(origin.path) in str(caught.value)
    assert caught.value.infra is False


async def test_a_missing_ref_is_not_an_infrastructure_fault(workspaces: Workspaces, origin: Repo) -> None:
    origin.commit({"a.txt": "one"})
    with pytest.raises(WorkspaceError) as caught:
        await workspaces.prepare(1, str(origin.path), "no-such-branch", None, Said())
    assert "no-such-branch" in str(caught.value) and str(origin.path) in str(caught.value)
    assert caught.value.infra is False


@pytest.mark.parametrize(("repo", "ref", "sha"), [
    ("-oProxyCommand=touch /tmp/x", "main", None),
    ("REPO", "--upload-pack=touch /tmp/x", None),
    ("REPO", "main:refs/heads/evil", None),
    ("REPO", "main", "HEAD~1"),
])
async def test_invalid_requests_are_refused_before_git_runs(
    workspaces: Workspaces, origin: Repo, repo: str, ref: str, sha: str | None
) -> None:
    origin.commit({"a.txt": "one"})
    with pytest.raises(WorkspaceError) as caught:
        await workspaces.prepare(1, repo.replace("REPO", str(origin.path)), ref, sha, Said())
    assert caught.value.infra is False
    assert list(workspaces.mirrors.iterdir()) == []


def all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


async def test_credentials_never_reach_git_config_nor_error_messages(
    base: Path, user: PodmanUser, origin: Repo
) -> None:
    workspaces = Workspaces(base / "data" / "workspaces", base / "data" / "mirrors", user, git_token=TOKEN)
    header = base64.b64encode(f"x-access-token:{TOKEN}".encode())
    with pytest.raises(WorkspaceError) as caught:
        await workspaces.prepare(1, "https://127.0.0.1:1/x.git", "main", None, Said())
    assert caught.value.infra is True
    assert "https://127.0.0.1:1/x.git" in str(caught.value) and TOKEN not in str(caught.value)
    with pytest.raises(WorkspaceError) as caught:
        await workspaces.prepare(2, "https://user:SECRET@127.0.0.1:1/x.git", "main", None, Said())
    assert "SECRET" not in str(caught.value) and "127.0.0.1:1/x.git" in str(caught.value)

    origin.commit({"a.txt": "one"})
    path = await workspaces.prepare(3, str(origin.path), "main", None, Said())
    stored = all_bytes(base / "data")
    assert TOKEN.encode() not in stored and header not in stored and b"SECRET" not in stored
    assert TOKEN not in (path / ".git" / "config").read_text()


class AuthRecorder(BaseHTTPRequestHandler):
    """Answers 401 to everything and remembers the Authorization headers it was sent."""

    seen: list[str | None] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="git"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def auth_server() -> Iterator[tuple[str, list[str | None]]]:
    AuthRecorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), AuthRecorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}", AuthRecorder.seen
    server.shutdown()


async def test_url_credentials_travel_as_a_header_and_the_token_skips_plain_http(
    base: Path, user: PodmanUser, auth_server: tuple[str, list[str | None]]
) -> None:
    address, seen = auth_server
    workspaces = Workspaces(base / "data" / "workspaces", base / "data" / "mirrors", user, git_token=TOKEN)
    with pytest.raises(WorkspaceError) as caught:
        await workspaces.prepare(1, f"http://alice:s3cret@{address}/x.git", "main", None, Said())
    assert seen and seen[0] == "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert "s3cret" not in str(caught.value) and caught.value.infra is True
    seen.clear()
    with pytest.raises(WorkspaceError):
        await workspaces.prepare(2, f"http://{address}/x.git", "main", None, Said())
    assert seen and all(value is None for value in seen)  # a token never goes out unencrypted
    assert b"s3cret" not in all_bytes(base / "data")


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


async def test_a_hanging_fetch_is_killed_at_its_timeout_and_keeps_the_token_off_command_lines(
    base: Path, user: PodmanUser
) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections into the backlog and never answers: the TLS handshake hangs
    url = f"https://127.0.0.1:{listener.getsockname()[1]}/x.git"
    workspaces = Workspaces(base / "data" / "workspaces", base / "data" / "mirrors", user, git_token=TOKEN,
                            fetch_timeout=3)
    task = asyncio.create_task(workspaces.prepare(1, url, "main", None, Said()))
    try:
        for _ in range(100):
            fetching = [pid for pid in processes_mentioning(url)
                        if Path(f"/proc/{pid}/comm").read_text().strip().startswith("git")]
            if fetching:
                break
            await asyncio.sleep(0.05)
        assert fetching, "git never started"
        header = base64.b64encode(f"x-access-token:{TOKEN}".encode())
        assert processes_mentioning(TOKEN) == [] and processes_mentioning(header.decode()) == []
        assert any(header in Path(f"/proc/{pid}/environ").read_bytes() for pid in fetching)  # delivered
        with pytest.raises(WorkspaceError) as caught:
            await asyncio.wait_for(task, 30)
    finally:
        listener.close()
    assert "timed out" in str(caught.value) and caught.value.infra is True
    assert processes_mentioning(url) == []


async def test_from_local_copies_the_working_tree_as_it_is(
    workspaces: Workspaces, base: Path, user: PodmanUser
) -> None:
    checkout = Repo(base / "checkout")
    (checkout.path / "linked").symlink_to("a.txt")
    head = checkout.commit({"a.txt": "committed", "gone.txt": "x", ".gitignore": "node_modules/\n.venv/\n"})
    (checkout.path / "a.txt").write_text("edited")
    (checkout.path / "gone.txt").unlink()
    (checkout.path / "new.txt").write_text("untracked")
    (checkout.path / "sub").mkdir()
    (checkout.path / "sub" / "deep.txt").write_text("deep")
    (checkout.path / "node_modules" / "pkg").mkdir(parents=True)
    (checkout.path / "node_modules" / "pkg" / "index.js").write_text("ignored")
    (checkout.path / ".venv").mkdir()
    (checkout.path / ".venv" / "pyvenv.cfg").write_text("ignored")
    checkout.path.chmod(0o700)  # only the invoking user (root) can read it

    path = await workspaces.from_local(1, checkout.path)
    assert (path / "a.txt").read_text() == "edited"
    assert (path / "new.txt").read_text() == "untracked"
    assert (path / "sub" / "deep.txt").read_text() == "deep"
    assert (path / "linked").is_symlink() and os.readlink(path / "linked") == "a.txt"
    assert not (path / "gone.txt").exists()
    assert not (path / "node_modules").exists() and not (path / ".venv").exists()
    assert (path / ".git").is_dir() and git(path, "rev-parse", "HEAD") == head
    assert git(path, "status", "--porcelain").splitlines() == [" M a.txt", " D gone.txt", "?? new.txt", "?? sub/"]
    assert owners(path) == {user.uid}


async def test_from_local_reads_a_checkout_another_user_owns(
    workspaces: Workspaces, base: Path, user: PodmanUser
) -> None:
    """Root copying the forgeci user's checkout: git would refuse it ("dubious ownership") without the per-command
    safe.directory; nobody's git configuration changes."""
    checkout = Repo(base / "theirs")
    head = checkout.commit({"a.txt": "committed", ".gitignore": "build/\n"})
    (checkout.path / "new.txt").write_text("untracked")
    (checkout.path / "build").mkdir()
    (checkout.path / "build" / "out.o").write_text("ignored")
    for sub in [checkout.path, *checkout.path.rglob("*")]:
        os.lchown(sub, user.uid, user.gid)
    gitconfig = Path.home() / ".gitconfig"
    before = gitconfig.read_bytes() if gitconfig.exists() else None
    path = await workspaces.from_local(1, checkout.path)
    assert (path / "new.txt").read_text() == "untracked" and not (path / "build").exists()
    assert (path / "a.txt").read_text() == "committed" and git(path, "rev-parse", "HEAD") == head
    assert (gitconfig.read_bytes() if gitconfig.exists() else None) == before


async def test_from_local_copies_a_plain_directory_whole(workspaces: Workspaces, base: Path, user: PodmanUser) -> None:
    plain = base / "plain"
    (plain / "node_modules").mkdir(parents=True)
    (plain / "node_modules" / "x.js").write_text("kept: no git, no ignore rules")
    (plain / "main.py").write_text("print(1)")
    path = await workspaces.from_local(1, plain)
    assert (path / "main.py").read_text() == "print(1)"
    assert (path / "node_modules" / "x.js").exists()
    assert owners(path) == {user.uid}


async def test_remove_deletes_files_owned_by_subuids(workspaces: Workspaces, origin: Repo, user: PodmanUser) -> None:
    origin.commit({"a.txt": "one"})
    path = await workspaces.prepare(1, str(origin.path), "main", None, Said())
    # What a container running as uid 1 leaves behind: it maps into the Podman user's subuid range.
    user.run(["podman", "unshare", "sh", "-c", f"cd {path} && touch f && mkdir d && touch d/f && chown -R 1:1 f d"])
    assert (path / "d").stat().st_uid not in (0, user.uid)
    assert user.run(["rm", "-rf", str(path)], check=False).returncode != 0  # plain rm cannot, as the user
    assert (path / "d" / "f").exists()
    await workspaces.remove(1)
    assert not path.exists()
    await workspaces.remove(1)  # already gone: nothing to do


async def test_reap_keeps_the_listed_jobs_and_removes_the_others(workspaces: Workspaces, base: Path) -> None:
    plain = base / "plain"
    plain.mkdir()
    (plain / "x").write_text("x")
    for job_id in (1, 2, 3):
        await workspaces.from_local(job_id, plain)
    (workspaces.root / "not-a-job").mkdir()
    assert await workspaces.reap({2, 9}) == [1, 3]
    assert sorted(p.name for p in workspaces.root.iterdir()) == ["2", "not-a-job"]
    assert await workspaces.reap({2}) == []


def test_an_untraversable_parent_is_named(base: Path, user: PodmanUser) -> None:
    locked = base / "locked"
    locked.mkdir(mode=0o600)  # nobody but root may enter
    with pytest.raises(WorkspaceError) as caught:
        Workspaces(locked / "data" / "workspaces", locked / "data" / "mirrors", user)
    assert str(locked) in str(caught.value)


ORDINARY_USER_SCRIPT = """
import asyncio, sys
from pathlib import Path
from runner.podman_user import PodmanUser
from runner.workspace import Workspaces

async def main() -> None:
    user = PodmanUser.resolve("ignored when not root")
    assert not user.switch
    data, repo = Path(sys.argv[1]), sys.argv[2]
    workspaces = Workspaces(data / "workspaces", data / "mirrors", user)
    path = await workspaces.prepare(7, repo, "main", None, print)
    print("content", (path / "a.txt").read_text())
    user.run(["podman", "unshare", "sh", "-c", f"cd {path} && mkdir d && touch d/f && chown -R 1:1 d"])
    await workspaces.remove(7)
    print("removed", not path.exists())

asyncio.run(main())
"""


def test_it_works_when_forgeci_runs_as_the_podman_user_itself(base: Path, user: PodmanUser, origin: Repo) -> None:
    origin.commit({"a.txt": "from root's repository"})
    data = base / "user-data"
    data.mkdir()
    os.chown(data, user.uid, user.gid)
    argv = [sys.executable, "-c", ORDINARY_USER_SCRIPT, str(data), str(origin.path)]
    if user.switch:
        # The venv's interpreter lives under /root; the system one (Debian 12: 3.11) is the user's.
        user.ensure_runtime_dir()
        argv = ["runuser", "-u", user.name, "--", "env", "-i", *(f"{k}={v}" for k, v in user.env().items()),
                f"PYTHONPATH={REPO_ROOT}", "PYTHONDONTWRITEBYTECODE=1", "/usr/bin/python3", *argv[1:]]
    result = subprocess.run(argv, capture_output=True, text=True, cwd="/", timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr
    assert "content from root's repository" in result.stdout
    assert "removed True" in result.stdout
