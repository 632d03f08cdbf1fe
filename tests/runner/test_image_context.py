"""What a repository image's hash covers: the Containerfile, the context as `.containerignore` leaves it, the FROM
ids; and the staged context holds exactly those files. No Podman needed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from config.images import ImageBuild
from runner.image_context import (
    BuildInput,
    ContextError,
    build_hash,
    context_entries,
    from_images,
    ignored,
    parse_ignore,
    stage_context,
)


def tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize(("pattern", "path", "left_out"), [
    ("node_modules", "node_modules/a/b.js", True),
    ("*.log", "debug.log", True),
    ("*.log", "sub/debug.log", False),  # `*` stays within one folder, as in Podman
    ("**/*.log", "sub/deep/debug.log", True),
    ("/build", "build/x", True),
    ("docs/?.md", "docs/a.md", True),
    ("docs/?.md", "docs/ab.md", False),
    ("[ab].txt", "a.txt", True),
    ("[!ab].txt", "a.txt", False),
])
def test_ignore_patterns_follow_podman(pattern: str, path: str, left_out: bool) -> None:
    assert ignored(path, parse_ignore(pattern)) is left_out


def test_the_last_matching_rule_wins_and_exceptions_bring_files_back() -> None:
    rules = parse_ignore("# comment\n\n*.md\n!README.md\nsecret/\n")
    assert ignored("notes.md", rules) and not ignored("README.md", rules)
    assert ignored("secret/key", rules) and not ignored("src/a.py", rules)


def test_the_hash_covers_what_the_build_sees_and_nothing_else(tmp_path: Path) -> None:
    root = tree(tmp_path / "repo", {"Containerfile": "FROM base\nCOPY . /src\n", "a.txt": "a", "sub/b.txt": "b",
                                    ".containerignore": "*.log\nsub/tmp\n", ".git/HEAD": "ref: x"})
    source = BuildInput.resolve(ImageBuild(containerfile="Containerfile"), root)
    first = build_hash(source, ["id1"])
    assert [rel for rel, _ in context_entries(root)] == [".containerignore", "Containerfile", "a.txt", "sub",
                                                          "sub/b.txt"]
    (root / "x.log").write_text("ignored")
    (root / "sub" / "tmp").mkdir()
    (root / "sub" / "tmp" / "t").write_text("ignored")
    (root / ".git" / "HEAD").write_text("another commit")
    os.utime(root / "a.txt", (1, 1))  # times are not content
    assert build_hash(source, ["id1"]) == first
    assert build_hash(source, ["id2"]) != first  # a rebuilt FROM image
    (root / "a.txt").write_text("changed")
    assert build_hash(source, ["id1"]) != first
    (root / "a.txt").write_text("a")
    (root / "a.txt").chmod(0o755)  # the mode is part of the file
    assert build_hash(source, ["id1"]) != first
    (root / "a.txt").chmod(0o644)
    changed = BuildInput.resolve(ImageBuild(containerfile="Containerfile"), root)
    assert build_hash(changed, ["id1"]) == first
    (root / "Containerfile").write_text("FROM base\nCOPY . /app\n")
    assert build_hash(BuildInput.resolve(ImageBuild(containerfile="Containerfile"), root), ["id1"]) != first


def test_the_staged_context_holds_exactly_the_hashed_files(tmp_path: Path) -> None:
    root = tree(tmp_path / "repo", {"ci/Containerfile": "FROM base\n", "ci/app/x.py": "x", "ci/junk.log": "j",
                                    "ci/.containerignore": "*.log\n", "outside.txt": "o"})
    (root / "ci" / "link").symlink_to("app/x.py")
    source = BuildInput.resolve(ImageBuild(containerfile="ci/Containerfile", context="ci"), root)
    stage_context(source, tmp_path / "staged")
    staged = sorted(str(p.relative_to(tmp_path / "staged")) for p in (tmp_path / "staged").rglob("*"))
    assert staged == [".containerignore", "Containerfile", "app", "app/x.py", "link"]
    assert os.readlink(tmp_path / "staged" / "link") == "app/x.py"


@pytest.mark.parametrize(("build", "message"), [
    (ImageBuild(containerfile="nope"), "has no file nope"),
    (ImageBuild(containerfile="Containerfile", context="missing"), "has no folder missing"),
    (ImageBuild(containerfile="escape/Containerfile"), "outside the repository"),
])
def test_bad_paths_are_the_pipelines_fault(tmp_path: Path, build: ImageBuild, message: str) -> None:
    root = tree(tmp_path / "repo", {"Containerfile": "FROM base\n"})
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "Containerfile").write_text("FROM base\n")
    (root / "escape").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ContextError, match=message):
        BuildInput.resolve(build, root)


def test_from_images_are_the_stages_bases() -> None:
    text = ("ARG BASE=localhost/forgeci-job:latest\n"
            "FROM --platform=linux/amd64 ${BASE} AS build\nRUN make\n"
            "FROM build AS test\n"
            "FROM scratch\n"
            "FROM localhost/debian:bookworm\nCOPY --from=build /out /out\n"
            "from $OTHER\n")
    assert from_images(text) == ["localhost/forgeci-job:latest", "localhost/debian:bookworm", "$OTHER"]
