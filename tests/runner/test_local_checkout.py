"""`forgeci run` and the checkout it reads: as root in a checkout another user owns (git's "dubious ownership"),
and in a folder that is not a git repository (or only inside one); `forgeci init --run` refusing the same."""

from __future__ import annotations

import io
import os
import pwd
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from config.errors import ConfigError
from config.settings import Settings
from runner.local import run_local
from tests.conftest import SETUP_HINT
from tests.fake_engine import FakeEngine

MakeRepo = Callable[..., tuple[Path, str]]
ROOT = Path(__file__).resolve().parents[2]
OWNER = "forgeci"  # the account scripts/setup makes; here only the owner of a checkout


def chown_to_owner(path: Path) -> None:
    """Give `path` to the forgeci user, as a user's own checkout would be; this test has to run as root."""
    if os.geteuid() != 0:
        pytest.fail("this test runs `forgeci run` as root in another user's checkout: run the tests as root")
    try:
        account = pwd.getpwnam(OWNER)
    except KeyError:
        pytest.fail(f"there is no {OWNER} user: {SETUP_HINT}")
    for folder, dirs, names in os.walk(path):
        os.lchown(folder, account.pw_uid, account.pw_gid)
        for name in dirs + names:
            os.lchown(os.path.join(folder, name), account.pw_uid, account.pw_gid)


def gitconfig() -> bytes | None:
    try:
        return (Path.home() / ".gitconfig").read_bytes()
    except FileNotFoundError:
        return None


def forgeci(*args: str, cwd: Path = ROOT, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(Path.home()),
           "PYTHONPATH": str(ROOT), **({"FORGECI_CONFIG": str(config)} if config else {})}
    return subprocess.run([sys.executable, "-m", "forgeci_cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120, check=False)


async def test_run_as_root_reads_a_checkout_another_user_owns(fake_settings: Settings, fake_engine: FakeEngine,
                                                              make_local_repo: MakeRepo) -> None:
    repo, sha = make_local_repo({".forgeci.toml": '[[steps]]\nname = "a"\nrun = "make"\n', "src.txt": "x"})
    (repo / "new.txt").write_text("untracked, not ignored")
    chown_to_owner(repo)
    plain = subprocess.run(["git", "-C", str(repo), "ls-files"], capture_output=True, text=True)
    assert plain.returncode != 0 and "dubious ownership" in plain.stderr  # what forgeci run used to hit
    before = gitconfig()
    out = io.StringIO()
    run = await run_local(fake_settings, repo, environ={}, out=out, engine=fake_engine)
    assert run.succeeded, out.getvalue()
    assert gitconfig() == before  # nothing was marked safe in anyone's configuration
    assert f"{repo} main {sha}" in out.getvalue()  # its branch and commit, read from the checkout
    assert fake_engine.runs() == ["make"]


async def test_a_folder_that_is_not_a_git_repository_is_refused_before_anything_runs(
        fake_settings: Settings, fake_engine: FakeEngine, tmp_path: Path, make_local_repo: MakeRepo) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / ".forgeci.toml").write_text('[[steps]]\nrun = "true"\n')
    with pytest.raises(ConfigError, match="is not a git repository"):
        await run_local(fake_settings, plain, environ={}, out=io.StringIO(), engine=fake_engine)
    repo, _ = make_local_repo({"sub/.forgeci.toml": '[[steps]]\nrun = "true"\n'})
    with pytest.raises(ConfigError, match=f"is inside the git repository {repo}, not its top folder"):
        await run_local(fake_settings, repo / "sub", environ={}, out=io.StringIO(), engine=fake_engine)
    assert fake_engine.execs == [] and not fake_settings.data_dir.exists()


def test_the_cli_says_so_in_one_line_and_exits_2(tmp_path: Path) -> None:
    plain = tmp_path.resolve() / "plain"
    plain.mkdir()
    for argv in (["run", str(plain)], ["init", "--run", str(plain)]):
        result = forgeci(*argv, cwd=tmp_path)
        assert result.returncode == 2, result
        assert result.stderr == (f"forgeci: {plain} is not a git repository: forgeci run reads a git checkout's "
                                 f"working tree (`git init` makes one)\n")
        assert result.stdout == ""
    assert not (plain / ".forgeci.toml").exists()  # init --run refused before writing anything
