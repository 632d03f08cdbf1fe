"""Workspace snapshots: policies, keys, take and restore, and `forgeci debug` on a real job's snapshot."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from config.settings import Settings
from runner.archive import CorruptArchive
from runner.models import JobState
from runner.podman_user import PodmanUser
from runner.queue import Queue
from runner.runtime import Runtime
from runner.snapshot import Snapshots, restore_snapshot, should_snapshot, snapshot_key
from runner.store import FileStore, S3Location, S3Store
from tests.runner.test_executor import log_text, submit, wait_terminal
from tests.runner.test_store import free_port

REPO = Path(__file__).resolve().parents[2]
MakeRepo = Callable[..., tuple[Path, str]]


class Log(list[str]):
    def __call__(self, text: str) -> None:
        self.append(text)


def test_policies() -> None:
    table = {policy: [s.value for s in JobState if should_snapshot(policy, s)]
             for policy in ("always", "on_success", "on_failure", "never")}
    assert table == {"always": ["success", "failure", "timeout"], "on_success": ["success"],
                     "on_failure": ["failure", "timeout"], "never": []}


def test_key_layout() -> None:
    key = snapshot_key(42, "ab" * 20, 1_800_000_000.123)
    assert key == f"snapshots/42/{'ab' * 20}/20270115T080000123Z.tar.zst"


def test_take_and_restore(tmp_path: Path, podman_user: PodmanUser) -> None:
    ws = tmp_path / "ws"
    (ws / "node_modules" / "a").mkdir(parents=True)
    (ws / "node_modules" / "a" / "i.js").write_text("1")
    (ws / ".venv" / "bin").mkdir(parents=True)
    (ws / ".venv" / "bin" / "python").symlink_to("/usr/bin/python3")
    (ws / "counter").write_text("x\n")
    store = FileStore(tmp_path / "store")
    with Queue(tmp_path / "q.db") as queue:
        snapshots = Snapshots(store, queue, podman_user, clock=lambda: 1_800_000_000.0)
        log = Log()
        record = snapshots.take(7, ws, sha="c" * 40, image="img", state=JobState.failure, failed_step=1,
                                failed_step_name="test", say=log)
        assert record is not None and queue.snapshot(7) == record
        assert record.key == f"snapshots/7/{'c' * 40}/20270115T080000000Z.tar.zst"
        assert any("snapshot: saved" in line and "step test failed" in line and "forgeci debug 7" in line
                   for line in log)
        target = tmp_path / "target"
        target.mkdir()
        restore_snapshot(store, record, target, podman_user, Log())
        assert (target / "counter").read_text() == "x\n"
        assert (target / ".venv" / "bin" / "python").readlink() == Path("/usr/bin/python3")
        if podman_user.switch:
            assert (target / "node_modules" / "a" / "i.js").stat().st_uid == podman_user.uid

        # A later attempt of the same job replaces the snapshot, and its archive.
        snapshots.clock = lambda: 1_800_000_100.0
        second = snapshots.take(7, ws, sha="c" * 40, image="img", state=JobState.success, failed_step=None,
                                failed_step_name=None, say=Log())
        assert second is not None and queue.snapshot(7) == second
        assert [o.key for o in store.list("snapshots/")] == [second.key]

        with pytest.raises(CorruptArchive):  # the checksum in the index guards the archive
            bad = type(second)(**{**second.to_dict(), "checksum": "0" * 64})
            (tmp_path / "again").mkdir()
            restore_snapshot(store, bad, tmp_path / "again", podman_user, Log())


def test_a_failed_upload_is_a_warning(tmp_path: Path, podman_user: PodmanUser) -> None:
    (tmp_path / "ws").mkdir()
    dead = S3Store(S3Location.parse(f"s3://down?endpoint=http://127.0.0.1:{free_port()}"), "k", "s", backoff=0.01)
    with Queue(tmp_path / "q.db") as queue:
        log = Log()
        assert Snapshots(dead, queue, podman_user).take(
            1, tmp_path / "ws", sha="", image="i", state=JobState.success, failed_step=None, failed_step_name=None,
            say=log) is None
        assert any("snapshot: warning: not saved" in line for line in log) and queue.snapshot(1) is None


@pytest.mark.slow
@pytest.mark.podman
async def test_forgeci_debug_runs_a_command_on_the_snapshot(runtime: Runtime, make_repo: MakeRepo,
                                                           settings: Settings, shared_dir: Path) -> None:
    repo, sha = make_repo({".forgeci.toml": '[[steps]]\nname = "build"\nrun = "echo built-at-$FORGECI_SHA > out.txt"\n'
                                            '[[steps]]\nname = "test"\nrun = "exit 3"\n'})
    job = await wait_terminal(runtime, submit(runtime, repo))
    assert job.state is JobState.failure
    assert re.search(r"snapshot: saved snapshots/\d+/[0-9a-f]{40}/\d{8}T\d{9}Z\.tar\.zst", log_text(runtime, job.id))
    config = shared_dir / "forgeci.toml"
    config.write_text(f'data_dir = "{settings.data_dir}"\n[runner]\nnetwork = "none"\n')
    command = [sys.executable, str(REPO / "forgeci_cli.py"), "--config", str(config), "debug", str(job.id)]
    result = subprocess.run([*command, "--", "cat", "out.txt"], capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"built-at-{sha}\n"
    assert "step test failed" in result.stderr
    failing = subprocess.run([*command, "--", "sh", "-c", "exit 5"], capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL)
    assert failing.returncode == 5
    # The debug container gets the job's own hardening, limits and network, not more.
    probe = "grep NoNewPrivs /proc/self/status; ulimit -n; cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' '"
    hardened = subprocess.run([*command, "--", "sh", "-c", probe], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
    assert hardened.returncode == 0, hardened.stderr
    no_new_privs, nofile, *interfaces = hardened.stdout.split()[1:]
    assert (no_new_privs, nofile, interfaces) == ("1", "20000", ["lo"]), hardened.stdout
    assert not list(settings.data_dir.joinpath("workspaces").glob("debug-*"))  # the copy is gone
    missing = subprocess.run([*command[:-1], "99999"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "job 99999 not found" in missing.stderr
