"""Hostile archives planted in the store, with checksums that match: the cache and snapshot paths refuse them all.

tests/runner/test_archive.py covers the extractor member by member; here the archives arrive the way an attacker
with write access to the store would deliver them, through real jobs, a retry from the failed step and
`forgeci debug`, and the test looks for anything written outside the workspace.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.archive import ArchiveError
from runner.models import JobState
from runner.runtime import Runtime
from runner.snapshot import debug_job
from tests.conftest import git
from tests.reliability.harness import Ledger, plural
from tests.reliability.report import Row
from tests.runner.test_archive import crafted, member
from tests.runner.test_executor import log_text, submit, wait_terminal

pytestmark = [pytest.mark.slow, pytest.mark.podman]

MakeRepo = Callable[..., tuple[Path, str]]

PIPELINE = '''snapshot = "on_failure"
[cache]
paths = ["deps"]
key_files = ["lock"]
[[steps]]
name = "build"
run = "mkdir -p deps && echo built > deps/file"
[[steps]]
name = "check"
run = "if [ -f fail ]; then exit 3; fi"
'''


def hostile(marker: str, outside: Path) -> list[tuple[str, bytes]]:
    """(what, tar.zst) pairs; every one tries to put `marker` outside the target, or to reach a host file."""
    too_long = tarfile.TarInfo("deps/" + "n" * (2 << 20))
    too_long.size = 0
    return [
        ("a ../ path", crafted([member("deps/ok", data=b"ok"), member(f"deps/../../../../{marker}", data=b"x")])),
        ("an absolute path", crafted([member(f"{outside}/{marker}", data=b"x")])),
        ("a symlink out, then a file through it",
         crafted([member("deps/link", tarfile.SYMTYPE, linkname=str(outside)),
                  member(f"deps/link/{marker}", data=b"x")])),
        ("a symlink with ../ out", crafted([member("deps/up", tarfile.SYMTYPE, linkname="../../../.."),
                                            member(f"deps/up/{marker}", data=b"x")])),
        ("a hard link to /etc/shadow", crafted([member("deps/shadow", tarfile.LNKTYPE, linkname="/etc/shadow")])),
        ("a device node", crafted([member("deps/mem", tarfile.CHRTYPE)])),
        ("a 2 MB name header", crafted([(too_long, b"")])),
    ]


def plant(rt: Runtime, key: str, data: bytes) -> str:
    """Store `data` as a new object and return its sha256 (what the index holds for it)."""
    rt.store.put_stream(key, io.BytesIO(data))
    return hashlib.sha256(data).hexdigest()


def escaped(root: Path, marker: str) -> list[Path]:
    """Files named with the marker: anywhere below the test's folder (every ../ lands there), or at the top of
    the usual places."""
    return [*root.rglob(f"*{marker}*"), *(p for top in ("/", "/tmp", "/var/tmp", "/etc")
                                          for p in Path(top).glob(f"*{marker}*"))]


async def test_hostile_archives_in_the_cache_and_snapshot_paths(runtime: Runtime, make_repo: MakeRepo,
                                                                shared_dir: Path, report: Callable[[str], Row]) -> None:
    cache_row = report("Hostile archives in the cache: a store object replaced by a crafted tar.zst with a matching "
                       "checksum (../ paths, absolute paths, symlinks out, hard link to /etc/shadow, device, 2 MB "
                       "name header)")
    snap_row = report("Hostile archive as a workspace snapshot: retry from the failed step, and `forgeci debug`")
    ledger = Ledger()
    marker = f"escaped-{uuid.uuid4().hex[:8]}"
    outside = shared_dir / "outside"
    outside.mkdir()
    outside.chmod(0o777)
    repo, sha = make_repo({".forgeci.toml": PIPELINE, "lock": "v1"})
    git(repo, "checkout", "-q", "-b", "failing")
    (repo / "fail").write_text("")
    git(repo, "add", "fail")
    git(repo, "commit", "-qm", "fail")
    failing_sha = git(repo, "rev-parse", "HEAD")

    def run(ref: str, commit: str) -> int:
        job_id = submit(runtime, repo, ref=ref, sha=commit)
        ledger.submitted_job(job_id)
        return job_id

    first = await wait_terminal(runtime, run("main", sha))
    assert first.state is JobState.success, log_text(runtime, first.id)
    refused = []
    for what, data in hostile(marker, outside):
        [entry] = runtime.queue.cache_entries()
        obj = f"caches/planted/{uuid.uuid4().hex}.tar.zst"
        checksum = plant(runtime, obj, data)
        runtime.queue.delete_cache_entry(entry.key)
        runtime.queue.add_cache_entry(dataclasses.replace(entry, object=obj, size=len(data), checksum=checksum))
        job = await wait_terminal(runtime, run("main", sha))
        text = log_text(runtime, job.id)
        assert job.state is JobState.success and job.cache_hit is False, (what, text)
        assert f"cache: {entry.key} cannot be restored (" in text and "deleted, counted as a miss" in text, (what, text)
        assert obj not in {e.object for e in runtime.queue.cache_entries()}, what
        assert not any(o.key == obj for o in runtime.store.list("caches/planted/")), f"{what}: the object stayed"
        assert escaped(shared_dir, marker) == [], what
        refused.append(text.split(f"cache: {entry.key} cannot be restored (", 1)[1].split(")", 1)[0])
    assert all("refused member" in r or "meta header" in r for r in refused), refused
    cache_row.happened = (f"{plural(len(refused), 'crafted archive')} refused, each job still `success` with a cache "
                          f"miss, the entry and its object deleted, nothing written outside the workspace; e.g. "
                          f"\"{refused[2]}\"")

    failed = await wait_terminal(runtime, run("failing", failing_sha))
    snapshot = runtime.queue.snapshot(failed.id)
    assert failed.state is JobState.failure and snapshot is not None and snapshot.failed_step == 1
    data = hostile(marker, outside)[2][1]
    checksum = plant(runtime, snapshot.key, data)
    runtime.queue.put_snapshot(dataclasses.replace(snapshot, size=len(data), checksum=checksum))
    retry_id = await runtime.control.retry(failed.id, from_failed_step=True)
    ledger.submitted_job(retry_id)
    retried = await wait_terminal(runtime, retry_id)
    assert retried.state is JobState.failure and "cannot be restored: refused member" in (retried.error or ""), retried
    with pytest.raises(ArchiveError, match="refused member"):
        await asyncio.to_thread(debug_job, runtime.settings, failed.id, ["true"], {}, lambda text: None)
    assert escaped(shared_dir, marker) == []
    assert not [p for p in runtime.layout.workspaces.iterdir() if p.name.startswith("debug-")]
    snap_row.happened = (f"the retry ended `failure`: {retried.error}; `forgeci debug` refused it too; nothing "
                         f"written outside the workspace")
    for row in (cache_row, snap_row):
        assert row.count(ledger, runtime.layout.db).total == 0
