"""Member safety checks of extraction: names that stay inside the target, symlinks that cannot lead out of it."""

from __future__ import annotations

from runner.errors import UnsafeArchive


def clean_name(name: str) -> str:
    """The member's path relative to the target ("" is the target itself); UnsafeArchive if it could leave it."""
    if "\0" in name:
        raise UnsafeArchive(name, "NUL in the name")
    if name.startswith("/"):
        raise UnsafeArchive(name, "absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(name, "'..' in the path")
    return "/".join(parts)


def check_symlink(rel: str, target: str, *, container_links: bool) -> None:
    """Refuse a symlink whose target can resolve outside the extraction root.

    Only leading `..` are allowed, no more than the link's depth: a `..` after a name could climb through
    another link (`a -> x/..` with `x -> ../..`), so chains of links stay inside by construction.
    With `container_links`, an absolute target is allowed: workspaces are mounted at /workspace in the job's
    container, where `/usr/bin/python3` (a venv's bin/python) means the image's file. Nothing here follows
    links: the extractor never writes through one, and tar and lchown never dereference them.
    """
    if not target or "\0" in target:
        raise UnsafeArchive(rel, "symlink with an empty target")
    if target.startswith("/"):
        if container_links:
            return
        raise UnsafeArchive(rel, f"symlink to the absolute path {target!r}")
    parts = [p for p in target.split("/") if p not in ("", ".")]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    if ".." in parts[ups:]:
        raise UnsafeArchive(rel, f"symlink target {target!r} has '..' after a name")
    if ups > rel.count("/"):
        raise UnsafeArchive(rel, f"symlink to {target!r} points outside the target")

