"""Moving restored artifact files from their staging folder into a workspace, through real folders only."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path

from runner.errors import ArchiveError


def remove_tree(path: Path | str) -> None:
    """Delete a file, link or folder (never following a link); a missing one is fine."""
    with contextlib.suppress(FileNotFoundError):
        if os.path.islink(path) or not os.path.isdir(path):
            os.unlink(path)
        else:
            shutil.rmtree(path)


def merge_into(staging: Path, workspace: Path) -> int:
    """Move everything below `staging` into the same place below `workspace`; returns how many files it replaced.

    Root does the moving before any step runs: a folder of the checkout on the way must be a real folder (a link
    there — the repository may hold any — would lead the move out of the workspace), so a link or file in its place
    stops the restore; a file or link where a restored file goes is replaced. Whatever moves keeps the owner the
    extraction gave it (the Podman user).
    """
    replaced = 0
    pending = [""]
    while pending:
        rel = pending.pop()
        source_dir = staging / rel if rel else staging
        for name in sorted(os.listdir(source_dir)):
            child = f"{rel}/{name}" if rel else name
            source, target = staging / child, workspace / child
            try:
                mode = os.lstat(target).st_mode
            except FileNotFoundError:
                os.rename(source, target)  # a whole new folder moves at once
                continue
            if stat.S_ISDIR(os.lstat(source).st_mode):
                if not stat.S_ISDIR(mode):
                    raise ArchiveError(f"cannot restore {child}/: {child} in the workspace is not a folder (a link?)")
                pending.append(child)
                continue
            if stat.S_ISDIR(mode):
                raise ArchiveError(f"cannot restore {child}: the workspace has a folder there")
            os.unlink(target)
            os.rename(source, target)
            replaced += 1
    return replaced
