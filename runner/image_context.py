"""What a repository image is built from: its Containerfile, its build context (honouring `.containerignore`) and
its `FROM` images; hashed into the image's tag, and staged as exactly the files that were hashed."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from config.images import ImageBuild

IGNORE_FILES = (".containerignore", ".dockerignore")  # Podman reads the first that exists
ALWAYS_IGNORED = ".git"  # the checkout's own metadata: a new commit alone must not change the image
CHUNK = 1 << 20


class ContextError(Exception):
    """The pipeline's build cannot be prepared (a missing Containerfile, a path outside the checkout): its fault."""


@dataclass(frozen=True)
class Pattern:
    regex: re.Pattern[str]
    exclude: bool  # False for a `!` exception


def _translate(pattern: str) -> str:
    """A Docker/Podman ignore pattern as a regex: `**` any number of folders, `*` and `?` within one name."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 1)) > i + 1:
            body = pattern[i + 1:end]
            out.append("[" + ("^" + re.escape(body[1:]) if body[0] in "!^" else re.escape(body)) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def parse_ignore(text: str) -> list[Pattern]:
    """The rules of a `.containerignore`: one pattern a line, `#` comments, `!` exceptions; the last match wins."""
    patterns = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        line = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        if line in ("", "."):
            continue
        patterns.append(Pattern(re.compile(_translate(line)), exclude))
    return patterns


def ignored(rel: str, patterns: list[Pattern]) -> bool:
    """Whether `rel` (a `/` path in the context) is left out: a pattern matching a folder leaves out what is in it."""
    parents = rel.split("/")
    candidates = ["/".join(parents[:n]) for n in range(1, len(parents) + 1)]
    verdict = False
    for pattern in patterns:
        if any(pattern.regex.fullmatch(c) for c in candidates):
            verdict = pattern.exclude
    return verdict


def context_entries(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every file, folder and symlink of the context that the build sees, in sorted order of their `/` paths."""
    patterns: list[Pattern] = []
    for name in IGNORE_FILES:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            patterns = parse_ignore((root / name).read_text(errors="replace"))
            break
    can_prune = not any(not p.exclude for p in patterns)  # an exception may bring back a file of a left-out folder

    def walk(folder: Path, prefix: str) -> Iterator[tuple[str, os.stat_result]]:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda e: e.name)
        for entry in entries:
            rel = prefix + entry.name
            if rel == ALWAYS_IGNORED:
                continue
            info = entry.stat(follow_symlinks=False)
            left_out = ignored(rel, patterns)
            if stat.S_ISDIR(info.st_mode):
                if not left_out:
                    yield rel, info
                if not (left_out and can_prune):
                    yield from walk(Path(entry.path), rel + "/")
            elif not left_out and (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)):
                yield rel, info

    yield from walk(root, "")


@dataclass(frozen=True)
class BuildInput:
    """A build, resolved against the checkout."""

    containerfile: Path
    context: Path
    text: str  # the Containerfile

    @classmethod
    def resolve(cls, build: ImageBuild, workspace: Path) -> BuildInput:
        root = workspace.resolve()
        containerfile = (root / build.containerfile).resolve()
        context = (root / build.context).resolve()
        for what, path in (("containerfile", containerfile), ("context", context)):
            if not path.is_relative_to(root):
                raise ContextError(f"image.{what} {path} is outside the repository")
        if not containerfile.is_file():
            raise ContextError(f"image.containerfile: the repository has no file {build.containerfile}")
        if not context.is_dir():
            raise ContextError(f"image.context: the repository has no folder {build.context}")
        try:
            text = containerfile.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ContextError(f"image.containerfile: cannot read {build.containerfile}: {exc}") from None
        return cls(containerfile, context, text)


_ARG = re.compile(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(\S*))?", re.IGNORECASE)
_FROM = re.compile(r"^\s*FROM\s+((?:--\S+\s+)*)(\S+)(?:\s+AS\s+(\S+))?\s*$", re.IGNORECASE)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def from_images(text: str) -> list[str]:
    """The images the Containerfile's stages start from (ARG defaults before the first FROM substituted); earlier
    stages and `scratch` are not images."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    images: list[str] = []
    seen_from = False
    for line in text.splitlines():
        if not seen_from and (arg := _ARG.match(line)):
            args[arg.group(1)] = arg.group(2) or ""
            continue
        match = _FROM.match(line)
        if not match:
            continue
        seen_from = True
        name = _VAR.sub(lambda m: args.get(m.group(1) or m.group(3)) or m.group(2) or m.group(0), match.group(2))
        if name.lower() not in stages and name.lower() != "scratch" and name not in images:
            images.append(name)
        if match.group(3):
            stages.add(match.group(3).lower())
    return images


def build_hash(source: BuildInput, from_ids: list[str]) -> str:
    """The image's identity: the Containerfile, every file of the context as the build sees it, the FROM ids."""
    digest = hashlib.sha256(b"forgeci-image-1\0" + source.text.encode() + b"\0")
    for image_id in from_ids:
        digest.update(b"from\0" + image_id.encode() + b"\0")
    for rel, info in context_entries(source.context):
        path = source.context / rel
        kind = "d" if stat.S_ISDIR(info.st_mode) else "l" if stat.S_ISLNK(info.st_mode) else "f"
        digest.update(f"{kind}\0{rel}\0{stat.S_IMODE(info.st_mode):o}\0".encode())
        if kind == "l":
            digest.update(os.readlink(path).encode(errors="surrogateescape") + b"\0")
        elif kind == "f":
            digest.update(f"{info.st_size}\0".encode())
            with path.open("rb") as handle:
                while block := handle.read(CHUNK):
                    digest.update(block)
    return digest.hexdigest()[:32]


def stage_context(source: BuildInput, target: Path) -> None:
    """Fill `target` with the context's files the hash covered (hard links where the file system allows)."""
    target.mkdir(mode=0o755)
    for rel, info in context_entries(source.context):
        src, dst = source.context / rel, target / rel
        if stat.S_ISDIR(info.st_mode):
            dst.mkdir()
            dst.chmod(stat.S_IMODE(info.st_mode) | 0o755)
        elif stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(src), dst)
        else:
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
                dst.chmod(stat.S_IMODE(info.st_mode) | 0o444)
