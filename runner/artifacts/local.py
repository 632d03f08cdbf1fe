"""`forgeci run` keeps the artifacts of its last run: unpacked from its scratch store into a folder it prints."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from runner.archive import ArchiveError, extract
from runner.artifacts.place import remove_tree
from runner.errors import QueueError, StoreError
from runner.queue import Queue
from runner.store import ObjectStore

LAST_RUN = "last-run-artifacts"  # below the data dir of the user running `forgeci run`


def folder_name(display: str) -> str:
    """A job's display name as one folder name (`test (python=3.12)` stays readable; `/` cannot be in it)."""
    name = re.sub(r"[/\0]", "_", display).strip() or "job"
    return "_" + name if name in (".", "..") else name


def keep_last_run(queue: Queue, store: ObjectStore, pipeline_id: int, target: Path,
                  say: Callable[[str], None]) -> Path | None:
    """Replace `target` with the kept artifacts of pipeline `pipeline_id`, one folder per job; `target`, or None
    when the run kept none (then the previous run's are gone too: the folder is always the last run's)."""
    try:
        records = [r for r in queue.artifacts_of(pipeline_id=pipeline_id, files=False) if r.object is not None]
    except QueueError as exc:
        say(f"artifacts of this run not kept: {exc}")
        return None
    remove_tree(target)
    if not records:
        return None
    target.mkdir(parents=True)
    for record in records:
        folder = target / folder_name(record.display)
        assert record.object is not None
        try:
            folder.mkdir()
            with store.get_stream(record.object) as stream:
                extract(stream, folder, checksum=record.checksum)
        except (StoreError, ArchiveError, OSError) as exc:
            say(f"artifacts of job {record.display} not kept: {exc}")
    return target
