"""Which files of a workspace an `artifacts` table keeps: its globs matched inside the workspace, never out of it."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_WILD = re.compile(r"[*?\[]")


def _component(part: str) -> str:
    """One glob component as a regex: `*` and `?` never cross a `/`, `[...]` is a class (`[!...]` negated)."""
    out: list[str] = []
    i = 0
    while i < len(part):
        char = part[i]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            start = i + 2 if part[i + 1:i + 2] in ("!", "^") else i + 1
            end = part.find("]", start + 1 if part[start:start + 1] == "]" else start)
            if end < 0:
                out.append(re.escape(char))
            else:
                body = part[i + 1:end]
                negated = body[:1] in ("!", "^")
                body = body[1:] if negated else body
                out.append("(?!/)[" + ("^" if negated else "") + body.replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """The regex of a workspace glob over `/`-separated relative paths: `**` is any number of folders (none too)."""
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    text = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            text += ".*" if last else "(?:[^/]+/)*"
        else:
            text += _component(part) + ("" if last else "/")
    return re.compile(text, re.DOTALL)


@dataclass
class Collected:
    """What the globs found: files (path -> size), the folders that hold them, and what was left out and why."""

    files: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # one log line each: links left out, unreadable folders
    unmatched: list[str] = field(default_factory=list)  # globs that matched nothing

    @property
    def total(self) -> int:
        return sum(self.files.values())

    def entries(self) -> list[str]:
        """What tar archives, in order: every folder holding a file (parents first), then the files."""
        dirs = sorted({"/".join(parts[:i]) for path in self.files for parts in [path.split("/")]
                       for i in range(1, len(parts))}, key=lambda d: (d.count("/"), d))
        return dirs + sorted(self.files)


class _Walker:
    """Matches globs below one root. Nothing here follows a link to a folder; a link to a file is kept (as the file)
    only when it resolves to a regular file inside the root. Tar runs as root and archives what this returns, after
    the job's container is gone: nothing can swap a checked path for a link meanwhile."""

    def __init__(self, root: Path, out: Collected) -> None:
        self.root = root
        self.real_root = os.path.realpath(root)
        self.out = out

    def add(self, rel: str) -> bool:
        """Keep the entry at `rel` (a folder: everything in it); True when it kept at least one file."""
        path = os.path.join(self.root, rel)
        try:
            info = os.lstat(path)
        except OSError:
            return False
        if stat.S_ISDIR(info.st_mode):
            return any([self.add(f"{rel}/{name}") for name in self._names(rel)])
        if stat.S_ISREG(info.st_mode):
            self.out.files[rel] = info.st_size
            return True
        if stat.S_ISLNK(info.st_mode):
            return self._link(rel, path)
        self.out.problems.append(f"left out {rel}: not a regular file")
        return False

    def _link(self, rel: str, path: str) -> bool:
        target = os.readlink(path)
        resolved = os.path.realpath(path)
        if os.path.commonpath([self.real_root, resolved]) != self.real_root:
            self.out.problems.append(f"left out {rel}: a symbolic link to {target}, outside the workspace")
            return False
        try:
            info = os.stat(resolved)
        except OSError:
            self.out.problems.append(f"left out {rel}: a broken symbolic link (to {target})")
            return False
        if not stat.S_ISREG(info.st_mode):
            self.out.problems.append(f"left out {rel}: a symbolic link to a folder ({target}) is not followed")
            return False
        self.out.files[rel] = info.st_size
        return True

    def _names(self, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(os.path.join(self.root, rel) if rel else self.root))
        except OSError as exc:
            self.out.problems.append(f"cannot read {rel or '.'}: {exc.strerror or exc}")
            return []

    def walk(self, rel: str) -> Iterator[tuple[str, bool]]:
        """(path, is a real folder) of everything below folder `rel`, parents before their contents."""
        for name in self._names(rel):
            child = f"{rel}/{name}" if rel else name
            try:
                is_dir = stat.S_ISDIR(os.lstat(os.path.join(self.root, child)).st_mode)
            except OSError:
                continue
            yield child, is_dir

    def match(self, pattern: str) -> bool:
        """Keep what `pattern` matches; True when it kept at least one file."""
        parts = [p for p in pattern.split("/") if p not in ("", ".")]
        if not parts or ".." in parts or pattern.startswith("/"):  # the schema refuses these; never trust a row
            self.out.problems.append(f"{pattern}: not a glob inside the workspace")
            return False
        literal = 0
        while literal < len(parts) and parts[literal] != "**" and not _WILD.search(parts[literal]):
            literal += 1
        for depth in range(1, min(literal, len(parts) - 1) + 1):  # the fixed folders must be real folders
            prefix = "/".join(parts[:depth])
            try:
                mode = os.lstat(os.path.join(self.root, prefix)).st_mode
            except OSError:
                return False
            if stat.S_ISLNK(mode):
                self.out.problems.append(f"{pattern}: {prefix} is a symbolic link; not followed")
                return False
            if not stat.S_ISDIR(mode):
                return False
        if literal == len(parts):
            return self.add("/".join(parts))
        regex = glob_regex(pattern)
        found = False
        pending = ["/".join(parts[:literal])]
        while pending:
            for child, is_dir in self.walk(pending.pop()):
                if regex.fullmatch(child):
                    found = self.add(child) or found
                elif is_dir:
                    pending.append(child)
        return found


def collect(root: Path, patterns: Sequence[str]) -> Collected:
    """The files `patterns` match below `root` (blocking: run it in a thread)."""
    out = Collected()
    walker = _Walker(root, out)
    for pattern in patterns:
        if not walker.match(pattern):
            out.unmatched.append(pattern)
    return out
