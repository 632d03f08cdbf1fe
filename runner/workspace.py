"""Job workspaces: the repository at the exact commit via per-repository mirrors, owned by the Podman user."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from runner.checkout import safe_git
from runner.errors import WorkspaceError
from runner.podman_cli import remove_tree_as
from runner.podman_user import PodmanUser
from runner.repos import parse_repo

Say = Callable[[str], None]

FETCH_TIMEOUT = 600.0  # seconds, per fetch from a remote
LOCAL_TIMEOUT = 300.0  # seconds, per local git or podman command (a checkout of a very large tree takes a while)
# How much of a ref's history to fetch when a server refuses to hand out an unadvertised commit by its sha.
FALLBACK_DEPTH = 100
# `ext::` runs arbitrary commands; a repository URL from a webhook or the API must not pick it.
ALLOWED_PROTOCOLS = "file:git:http:https:ssh"
# Local repositories may belong to another user (root's checkout); git refuses to serve those to the Podman user
# unless told to. upload-pack ignores the hooks a repository's own config could name, so serving it is safe.
LOCAL_UPLOAD_PACK = "--upload-pack=git -c 'safe.directory=*' upload-pack"

_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_SHA = re.compile(r"[0-9a-fA-F]{4,64}")
_BAD_REF = re.compile(r"^[-+^]|[:*\s\x00-\x1f\x7f]")  # options, refspec syntax (src:dst, globs, negation)


@dataclass(frozen=True)
class _Result:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False


@dataclass(frozen=True)
class _Remote:
    """Where to fetch from: a URL without credentials, and the credentials as git config for the environment only."""

    url: str
    local: bool
    header_key: str = ""  # http.<scheme>://<host>/.extraHeader: scoped, so a redirect elsewhere never gets it
    header: str = ""  # "Authorization: Basic ..."
    secrets: tuple[str, ...] = ()

    @classmethod
    def parse(cls, repo: str, token: str | None) -> _Remote:
        """Split credentials off `repo`; the token goes only to https remotes without their own userinfo."""
        if not repo.strip() or repo.startswith("-"):
            raise WorkspaceError(f"invalid repository {_USERINFO.sub('***@', repo)!r}", infra=False)
        try:
            address = parse_repo(repo)
        except ValueError as exc:  # a URL urllib cannot split: no fetch can help it
            raise WorkspaceError(f"invalid repository {_USERINFO.sub('***@', repo)!r}: {exc}", infra=False) from None
        scheme, url = address.scheme, address.url
        if scheme not in ("http", "https"):
            return cls(url, local=address.local)
        if address.username is not None:
            user, password = unquote(address.username), unquote(address.password or "")
            credentials = f"{user}:{password}"
            # Without a password the user part is the secret (https://TOKEN@host/...); masked raw and decoded.
            secrets: tuple[str, ...] = (password, address.password or "") if password else (user, address.username)
        elif token and scheme == "https":
            credentials, secrets = f"x-access-token:{token}", (token,)
        else:
            return cls(url, local=False)
        if "\n" in credentials or "\r" in credentials:
            raise WorkspaceError(f"the credentials for {url} contain a line break", infra=False)
        encoded = base64.b64encode(credentials.encode()).decode()
        return cls(url, False, f"http.{scheme}://{address.hostport}/.extraHeader", f"Authorization: Basic {encoded}",
                   tuple(s for s in (*secrets, encoded) if s))

    def mask(self, text: str) -> str:
        """`text` without any credential: ours, and any userinfo in a URL."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return _USERINFO.sub("***@", text)

    def env(self) -> tuple[dict[str, str], dict[str, str]]:
        """The environment of a fetch: public variables, and secret ones (never on a command line)."""
        public = {"GIT_ALLOW_PROTOCOL": ALLOWED_PROTOCOLS}
        if not self.header:
            return public, {}
        public |= {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": self.header_key}
        return public, {"GIT_CONFIG_VALUE_0": self.header}


def _tail(text: str, lines: int = 3) -> str:
    """The last lines git wrote, on one line: its error is at the end."""
    kept = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("hint:")]
    return " | ".join(kept[-lines:]) or "no output"


def _check_request(ref: str, sha: str | None) -> None:
    if not ref or _BAD_REF.search(ref) or ".." in ref:
        raise WorkspaceError(f"invalid ref {ref!r}", infra=False)
    if sha is not None and not _SHA.fullmatch(sha):
        raise WorkspaceError(f"invalid commit sha {sha!r}", infra=False)


class Workspaces:
    """Per-job directories under `root`, filled from bare mirrors under `mirrors`; all owned by the Podman user."""

    def __init__(
        self, root: Path, mirrors: Path, user: PodmanUser, git_token: str | None = None, *,
        fetch_timeout: float = FETCH_TIMEOUT, local_timeout: float = LOCAL_TIMEOUT,
        remove_tree: Callable[[Path], Awaitable[None]] | None = None,
    ) -> None:
        self.root = Path(root).absolute()
        self.mirrors = Path(mirrors).absolute()
        self.user = user
        # The engine's removal (files its containers wrote under other uids); the Podman user's by default.
        self._remove_tree = remove_tree or (lambda path: asyncio.to_thread(remove_tree_as, user, path))
        self.git_token = git_token
        self.fetch_timeout = fetch_timeout
        self.local_timeout = local_timeout
        self._locks: dict[str, asyncio.Lock] = {}
        for folder in (self.root, self.mirrors):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                user.chown(folder)
            except OSError as exc:
                raise WorkspaceError(f"cannot create {folder}: {exc.strerror}", infra=True) from None
        self._check_traversable()

    def _check_traversable(self) -> None:
        """Fail early, naming the folder, when the Podman user cannot reach the workspaces or mirrors."""
        ancestors = sorted({p for folder in (self.root, self.mirrors) for p in folder.parents},
                           key=lambda p: len(p.parts))  # outermost first: the first one blocked is the one to fix
        # Ask the kernel as that user (ACLs and groups included) rather than reimplementing permission checks.
        script = 'for d do [ -x "$d" ] || { echo "$d"; exit 0; }; done'
        result = self.user.run(["sh", "-c", script, "sh", *map(str, ancestors)], check=False, timeout=60)
        if result.returncode != 0:
            raise WorkspaceError(f"cannot run a command as the Podman user {self.user.name}: "
                                 f"{_tail(result.stderr.decode(errors='replace'))}", infra=True)
        if blocked := result.stdout.decode().strip():
            raise WorkspaceError(f"{blocked} is not traversable by the Podman user {self.user.name}: give it o+x "
                                 f"(chmod o+x {blocked}) or choose another data_dir", infra=True)

    def path(self, job_id: int) -> Path:
        """Where job `job_id`'s workspace lives."""
        return self.root / str(job_id)

    async def prepare(self, job_id: int, repo: str, ref: str, sha: str | None, say: Say) -> Path:
        """A fresh workspace with `sha` (or the tip of `ref` when None) checked out detached; returns its path."""
        remote = _Remote.parse(repo, self.git_token)
        sha = sha or None  # "" from an API client means "the tip of ref" too
        _check_request(ref, sha)
        workspace = self.path(job_id)
        await self._remove(workspace)  # a retried job starts clean
        mirror = self._mirror_of(remote)
        async with self._locked(mirror):
            commit = await self._update_mirror(mirror, remote, ref, sha, say)
            start = time.monotonic()
            # A fetch (not `clone --shared`) so the workspace owns its objects: the container sees nothing else.
            await self._must(["git", "init", "--quiet", str(workspace)], remote, "create the workspace for")
            await self._must(["git", "-C", str(workspace), "fetch", "--quiet", "--no-tags", "--depth=1", "--",
                              str(mirror), commit], remote, "copy the commit from the mirror of")
        await self._must(["git", "-C", str(workspace), "checkout", "--quiet", "--detach", commit], remote,
                         f"check out {commit} of")
        await self._must(["git", "-C", str(workspace), "remote", "add", "origin", remote.url], remote,
                         "set origin to")
        say(f"checked out {commit[:12]} in {time.monotonic() - start:.1f}s")
        return workspace

    def _mirror_of(self, remote: _Remote) -> Path:
        return self.mirrors / f"{hashlib.sha256(remote.url.encode()).hexdigest()[:16]}.git"

    async def resolve(self, repo: str, ref: str, sha: str | None, say: Say) -> str:
        """The full sha of `sha` (or of the tip of `ref`), fetched into the repository's mirror when it lacks it:
        what planning pins for every job of a pipeline. WorkspaceError (`infra` as for prepare) otherwise."""
        remote = _Remote.parse(repo, self.git_token)
        sha = sha or None
        _check_request(ref, sha)
        mirror = self._mirror_of(remote)
        async with self._locked(mirror):
            return await self._update_mirror(mirror, remote, ref, sha, say)

    async def fetch_history(self, repo: str, what: str, depth: int) -> str | None:
        """Fetch `what` (a ref or a sha) into the repository's mirror with `depth` commits of its history (the
        changed-files diff of planning needs older commits and merge bases); its full sha, None when git could not."""
        remote = _Remote.parse(repo, self.git_token)
        mirror = self._mirror_of(remote)
        async with self._locked(mirror):
            result = await self._fetch(mirror, remote, what, depth=depth)
            return await self._commit(mirror, "FETCH_HEAD") if result.returncode == 0 else None

    async def mirror_git(self, repo: str, *args: str) -> str | None:
        """The output of a read-only git command in the repository's mirror, None when it fails."""
        mirror = self._mirror_of(_Remote.parse(repo, self.git_token))
        result = await self._run(["git", "-C", str(mirror), *args], timeout=self.local_timeout)
        return result.stdout if result.returncode == 0 else None

    async def read_file(self, repo: str, sha: str, path: str) -> str | None:
        """The text of `path` at commit `sha` from the mirror (resolve() fetched it), no workspace needed;
        None when the commit has no such file."""
        mirror = self._mirror_of(_Remote.parse(repo, self.git_token))
        result = await self._run(["git", "-C", str(mirror), "show", f"{sha}:{path}"], timeout=self.local_timeout)
        return result.stdout if result.returncode == 0 else None

    async def _update_mirror(self, mirror: Path, remote: _Remote, ref: str, sha: str | None, say: Say) -> str:
        """Make sure the mirror holds the commit (fetching only what it lacks); returns its full sha."""
        fresh = not (mirror / "HEAD").exists()
        if fresh:
            await self._must(["git", "init", "--quiet", "--bare", str(mirror)], remote, "create the mirror of")
        elif sha and (found := await self._commit(mirror, sha)):
            say(f"mirror hit: {found[:12]} is already in the mirror of {remote.url}")
            await self._keep(mirror, ref, found, remote)
            return found
        wanted = f"{ref} @ {sha[:12]}" if sha else ref
        say(f"mirror {'miss' if fresh else 'hit'}: fetching {wanted} from {remote.url}")
        start = time.monotonic()
        found = None
        if sha:
            result = await self._fetch(mirror, remote, sha, depth=1)
            found = await self._commit(mirror, sha) if result.returncode == 0 else None
            if found is None and not result.timed_out:
                # Servers that refuse unadvertised commits (protocol v0, dumb http): look in the ref's recent history.
                result = await self._fetch(mirror, remote, ref, depth=FALLBACK_DEPTH)
                if result.returncode == 0:
                    found = await self._commit(mirror, sha)
                    if found is None:
                        raise WorkspaceError(
                            f"commit {sha} not found in {remote.url} (not fetchable by sha, and not in the last "
                            f"{FALLBACK_DEPTH} commits of {ref!r})", infra=False)
        else:
            result = await self._fetch(mirror, remote, ref, depth=1)
            found = await self._commit(mirror, "FETCH_HEAD") if result.returncode == 0 else None
        if found is None:
            stderr = remote.mask(result.stderr)
            if "couldn't find remote ref" in stderr:
                also = f" (and commit {sha} cannot be fetched by its sha)" if sha else ""
                raise WorkspaceError(f"ref {ref!r} not found in {remote.url}{also}", infra=False)
            raise WorkspaceError(f"cannot fetch {sha or ref} from {remote.url}: {_tail(stderr)}", infra=True)
        await self._keep(mirror, ref, found, remote)
        say(f"fetched {found[:12]} in {time.monotonic() - start:.1f}s")
        return found

    async def _fetch(self, mirror: Path, remote: _Remote, what: str, depth: int) -> _Result:
        """Fetch `what` from the remote into the mirror's FETCH_HEAD; credentials only in the environment."""
        argv = ["git", "-C", str(mirror), "-c", "gc.autoDetach=false",  # gc inside the lock, not after it
                "fetch", "--quiet", "--no-tags", f"--depth={depth}"]
        if remote.local:
            argv.append(LOCAL_UPLOAD_PACK)
        public, secret = remote.env()
        return await self._run([*argv, "--", remote.url, what], env=public, secrets=secret,
                               timeout=self.fetch_timeout)

    async def _commit(self, repo: Path, rev: str) -> str | None:
        """The full sha of commit `rev` in `repo`, None when it is not there."""
        result = await self._run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                                 timeout=self.local_timeout)
        return result.stdout.strip() if result.returncode == 0 else None

    async def _keep(self, mirror: Path, ref: str, commit: str, remote: _Remote) -> None:
        """Point a mirror ref at the commit, one per ref: gc keeps it, and later fetches of the ref send only news."""
        name = f"refs/forgeci/{hashlib.sha256(ref.encode()).hexdigest()[:16]}"  # any ref name, no D/F clashes
        await self._must(["git", "-C", str(mirror), "update-ref", name, commit], remote, "record the commit of")

    async def _must(self, argv: Sequence[str], remote: _Remote, doing: str) -> None:
        result = await self._run(argv, timeout=self.local_timeout)
        if result.returncode != 0:
            raise WorkspaceError(f"cannot {doing} {remote.url}: {_tail(remote.mask(result.stderr))}", infra=True)

    @contextlib.asynccontextmanager
    async def _locked(self, mirror: Path) -> AsyncIterator[None]:
        """One fetch per mirror at a time: an asyncio lock within this process, an flock across processes."""
        async with self._locks.setdefault(mirror.name, asyncio.Lock()):
            lock_path = mirror.with_suffix(".lock")
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                self.user.chown(lock_path)
                delay = 0.01
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        # Poll instead of blocking a thread: a cancelled job must leave no waiter behind.
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 0.2)
                yield
            finally:
                os.close(fd)  # releases the flock

    async def from_local(self, job_id: int, path: Path) -> Path:
        """Copy a local checkout's working tree as it is (ignored files left out, `.git` kept) into a workspace."""
        source = Path(path).absolute()
        if not source.is_dir():
            raise WorkspaceError(f"{path} is not a directory", infra=False)
        files = None
        if (source / ".git").exists():
            # As the invoking user: the checkout is theirs, and it may be unreadable to the Podman user. It may
            # also belong to someone else (root running `forgeci run` in a user's checkout): safe_git reads it.
            result = await self._run(
                [*safe_git(source), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                timeout=self.local_timeout, as_user=False)
            if result.returncode != 0:
                raise WorkspaceError(f"cannot list the files of {source}: {_tail(result.stderr)}", infra=False)
            files = list(dict.fromkeys(name for name in result.stdout.split("\0") if name))  # stages repeat names
        workspace = self.path(job_id)
        await self._remove(workspace)
        try:
            await asyncio.to_thread(self._copy, source, workspace, files)
        except OSError as exc:
            raise WorkspaceError(f"cannot copy {source} into {workspace}: {exc}", infra=False) from None
        return workspace

    def _copy(self, source: Path, workspace: Path, files: list[str] | None) -> None:
        workspace.mkdir()
        if files is None:
            shutil.copytree(source, workspace, symlinks=True, dirs_exist_ok=True)
        else:
            for name in [".git", *files]:
                src, dst = source / name, workspace / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                if src.is_symlink():
                    dst.symlink_to(os.readlink(src))
                elif src.is_dir():  # .git, or a submodule's checkout
                    shutil.copytree(src, dst, symlinks=True)
                elif src.exists():  # a tracked file deleted in the working tree stays deleted
                    shutil.copy2(src, dst)
        if self.user.switch:
            for folder, dirs, names in os.walk(workspace):
                os.lchown(folder, self.user.uid, self.user.gid)
                for name in dirs + names:
                    os.lchown(os.path.join(folder, name), self.user.uid, self.user.gid)

    async def remove(self, job_id: int) -> None:
        """Delete job `job_id`'s workspace, whatever its containers left in it."""
        await self._remove(self.path(job_id))

    async def reap(self, keep: set[int]) -> list[int]:
        """Remove every workspace whose job is not in `keep` (start-up cleanup after a crash); returns their ids."""
        stale = sorted(int(p.name) for p in self.root.iterdir()
                       if p.name.isascii() and p.name.isdigit() and int(p.name) not in keep)
        for job_id in stale:
            await self.remove(job_id)
        return stale

    async def _remove(self, path: Path) -> None:
        if not os.path.lexists(path):
            return
        try:
            await self._remove_tree(path)
        except OSError as exc:
            if not os.path.lexists(path):  # removed meanwhile (a cancelled job's own clean-up racing a reap): done
                return
            raise WorkspaceError(f"cannot remove {path}: {exc}", infra=True) from None

    async def _run(
        self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None,
        secrets: Mapping[str, str] | None = None, as_user: bool = True,
    ) -> _Result:
        """Run `argv` (as the Podman user unless `as_user` is False) without blocking; killed after `timeout`.

        `secrets` reach the process through its stdin, read into its environment by a shell: a command line is
        visible to every user in ps, and `user.command` passes the environment on one.
        """
        inner = list(argv)
        data = None
        if secrets:
            script = "".join(f"IFS= read -r {name} && export {name} && " for name in secrets) + 'exec "$@"'
            inner = ["sh", "-c", script, "sh", *inner]
            data = "".join(f"{value}\n" for value in secrets.values()).encode()
        inner = ["env", "GIT_TERMINAL_PROMPT=0", *(f"{k}={v}" for k, v in (env or {}).items()), *inner]
        if as_user:
            command = self.user.command(inner)
            environ = None if self.user.switch else {**os.environ, **self.user.env()}
            cwd = self.user.home if os.path.isdir(self.user.home) else "/"  # our cwd may be unreadable to it
        else:
            command, environ, cwd = inner, None, None
        proc = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE if data else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=environ, cwd=cwd,
            start_new_session=True,  # one process group to kill (git and its helpers), and no tty to prompt on
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(data), timeout)
        except TimeoutError:
            return _Result(-1, "", f"timed out after {timeout:g}s", timed_out=True)
        finally:
            if proc.returncode is None:  # timed out or cancelled
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        assert proc.returncode is not None  # communicate() waited for it
        return _Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
