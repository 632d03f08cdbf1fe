"""Archives: a round trip keeps files, links, modes and times; every hostile member is refused; damage is caught."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import threading
from collections.abc import Iterable
from pathlib import Path

import pytest
import zstandard

from runner.archive import (
    ArchiveAborted, ArchiveError, ArchiveWriter, CorruptArchive, UnsafeArchive, check_paths, check_symlink,
    clean_name, extract,
)
from runner.podman_user import PodmanUser


def archive(root: Path, paths: list[str], **kwargs: object) -> tuple[bytes, str]:
    """The tar.zst bytes of `paths` below `root`, and the checksum the writer computed."""
    out = io.BytesIO()
    with ArchiveWriter(root, paths, **kwargs) as writer:  # type: ignore[arg-type]
        while data := writer.read(65536):
            out.write(data)
        info = writer.info()
    assert info.size == len(out.getvalue())
    return out.getvalue(), info.checksum


def unpack(data: bytes, target: Path, **kwargs: object):  # type: ignore[no-untyped-def]
    target.mkdir(exist_ok=True)
    return extract(io.BytesIO(data), target, **kwargs)  # type: ignore[arg-type]


def make_tree(root: Path) -> None:
    (root / "node_modules" / "pkg" / "lib").mkdir(parents=True)
    (root / "node_modules" / "pkg" / "lib" / "index.js").write_text("module.exports = 1\n" * 1000)
    (root / "node_modules" / "pkg" / "package.json").write_text('{"name": "pkg"}')
    run = root / "node_modules" / "pkg" / "run.sh"
    run.write_text("#!/bin/sh\necho hi\n")
    run.chmod(0o755)
    (root / "node_modules" / ".bin").mkdir()
    (root / "node_modules" / ".bin" / "run").symlink_to("../pkg/run.sh")
    os.link(root / "node_modules" / "pkg" / "package.json", root / "node_modules" / "pkg" / "hardlink.json")
    (root / "node_modules" / "empty").mkdir()
    long_dir = root / "node_modules" / ("d" * 120)
    long_dir.mkdir()
    (long_dir / ("f" * 150)).write_bytes(os.urandom(70_000))  # GNU long names, binary data over one chunk
    (root / "node_modules" / os.fsdecode(b"caf\xc3\xa9-\xff.txt")).write_text("odd name")  # UTF-8 and not
    (root / "node_modules" / "readonly").mkdir()
    (root / "node_modules" / "readonly" / "f").write_text("x")
    (root / "node_modules" / "readonly").chmod(0o555)
    os.utime(root / "node_modules" / "pkg" / "package.json", (1_600_000_000, 1_600_000_000))
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "python").symlink_to("/usr/bin/python3")  # a venv's link into the image


def listing(root: Path) -> dict[str, tuple[str, int, object]]:
    """Every entry below root: kind, permission bits, and content, link target or nothing."""
    out: dict[str, tuple[str, int, object]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", 0, os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), None)
        else:
            out[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return out


@pytest.mark.parametrize("compressor", ["zstandard", "zstd"])
def test_round_trip_keeps_files_links_modes_and_times(tmp_path: Path, compressor: str) -> None:
    make_tree(tmp_path / "src")
    data, checksum = archive(tmp_path / "src", ["node_modules", ".venv"], compressor=compressor)
    assert checksum == hashlib.sha256(data).hexdigest()
    info = unpack(data, tmp_path / "out", checksum=checksum, container_links=True)
    assert listing(tmp_path / "out") == listing(tmp_path / "src")
    assert (info.links, info.checksum, info.size) == (3, checksum, len(data))  # 2 symlinks and the hard link
    out = tmp_path / "out" / "node_modules" / "pkg"
    assert out.joinpath("package.json").stat().st_mtime == 1_600_000_000
    assert out.joinpath("package.json").stat().st_ino == out.joinpath("hardlink.json").stat().st_ino


def test_extracted_files_belong_to_the_owner_and_lose_setuid(tmp_path: Path, podman_user: PodmanUser) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "tool").write_text("x")
    (src / "d" / "tool").chmod(0o4755)
    (src / "d" / "link").symlink_to("tool")
    data, checksum = archive(src, ["d"])
    owner = (podman_user.uid, podman_user.gid)
    unpack(data, tmp_path / "out", checksum=checksum, owner=owner)
    for rel in ("d", "d/tool", "d/link"):
        st = (tmp_path / "out" / rel).lstat()
        assert (st.st_uid, st.st_gid) == owner, rel
    assert stat.S_IMODE((tmp_path / "out" / "d" / "tool").stat().st_mode) == 0o755


def test_tar_does_not_follow_a_path_that_is_a_link(tmp_path: Path) -> None:
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key").write_text("root's")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "node_modules").symlink_to(tmp_path / "secret")
    (ws / "a").symlink_to(tmp_path / "secret")
    kept, problems = check_paths(ws, ["node_modules", "a/key", "missing", "node_modules/x", "../up"])
    assert kept == ["node_modules"]  # the link itself; a/key would read through the link: refused
    assert any("a/key" in p for p in problems) and any("../up" in p for p in problems)
    data, _ = archive(ws, kept)
    members = tarfile.open(fileobj=io.BytesIO(zstandard.ZstdDecompressor().decompressobj().decompress(data)))
    assert [(m.name, m.issym()) for m in members] == [("node_modules", True)]


def test_overlapping_paths_are_archived_once(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert check_paths(tmp_path, ["a/b", "a", "a/"]) == (["a"], [])


def test_tar_failure_is_an_archive_error(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="tar exited with 2"):
        archive(tmp_path, ["does-not-exist"])


def test_cancel_stops_writing_and_reading(tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    abort = threading.Event()
    abort.set()
    with pytest.raises(ArchiveAborted):
        archive(tmp_path / "src", ["node_modules"], abort=abort)
    data, _ = archive(tmp_path / "src", ["node_modules"])
    with pytest.raises(ArchiveAborted):
        unpack(data, tmp_path / "out", abort=abort)


# -- damage --------------------------------------------------------------------------------------------------


def test_damaged_archives_are_caught(tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    data, checksum = archive(tmp_path / "src", ["node_modules"])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    with pytest.raises(CorruptArchive):
        unpack(bytes(flipped), tmp_path / "a", checksum=checksum)
    with pytest.raises(CorruptArchive):
        unpack(data[: len(data) // 2], tmp_path / "b", checksum=checksum)
    with pytest.raises(CorruptArchive, match="checksum"):
        unpack(data, tmp_path / "c", checksum="0" * 64)
    with pytest.raises(CorruptArchive):
        unpack(data + b"trailing", tmp_path / "d", checksum=checksum)


# -- hostile members -------------------------------------------------------------------------------------------


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", linkname: str = "",
           mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname, info.mode = kind, len(data), linkname, mode
    return info, data


def crafted(members: Iterable[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """A tar.zst written header by header: tarfile's writer keeps names as given (no sanitising)."""
    raw = bytearray()
    for info, data in members:
        raw += info.tobuf(tarfile.GNU_FORMAT)
        raw += data + bytes(-len(data) % 512)
    raw += bytes(1024)
    return zstandard.ZstdCompressor().compress(bytes(raw))


def refused(tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]], match: str,
            container_links: bool = False, target: Path | None = None) -> Path:
    """Extract the crafted archive into tmp_path/target; it must be refused with `match`, and nothing may appear
    outside the target."""
    def outside() -> set[Path]:
        return {p for p in tmp_path.rglob("*") if not p.relative_to(tmp_path).parts[0].startswith("target")}

    before = outside()
    if target is None:  # each archive of a test gets a folder of its own
        target = tmp_path / f"target{len(list(tmp_path.glob('target*')))}"
    with pytest.raises(UnsafeArchive, match=match):
        unpack(crafted(members), target, container_links=container_links)
    assert outside() == before, "something was written outside the target"
    return target


@pytest.mark.parametrize("name", ["/tmp/evil", "//etc/evil", "../evil", "a/../../evil", "a/b/../../../evil",
                                  "./../evil"])
def test_paths_leaving_the_target(tmp_path: Path, name: str) -> None:
    refused(tmp_path, [member("ok"), member(name, data=b"pwned")], "absolute path|'\\.\\.'")


def test_absolute_symlink(tmp_path: Path) -> None:
    refused(tmp_path, [member("etc", tarfile.SYMTYPE, linkname="/etc")], "absolute")


def test_absolute_symlink_is_kept_as_a_container_path_but_never_followed(tmp_path: Path) -> None:
    # A venv's bin/python -> /usr/bin/python3 names the image's file; writing through it is still refused.
    target = refused(tmp_path, [member("bin", tarfile.DIRTYPE, mode=0o755),
                                member("bin/python", tarfile.SYMTYPE, linkname=str(tmp_path / "outside")),
                                member("bin/python/x", data=b"pwned")], "writes through", container_links=True)
    assert os.readlink(target / "bin" / "python") == str(tmp_path / "outside")
    assert not (tmp_path / "outside").exists()


@pytest.mark.parametrize("link, to", [("up", ".."), ("a/up", "../.."), ("a/b/up", "../../../x"),
                                      ("sneaky", "a/../../x"), ("dots", "./.././x")])
def test_symlinks_pointing_outside(tmp_path: Path, link: str, to: str) -> None:
    refused(tmp_path, [member(link, tarfile.SYMTYPE, linkname=to)], "outside|'\\.\\.' after a name",
            container_links=True)


def test_chain_of_links_that_escapes(tmp_path: Path) -> None:
    # a/b/top -> ../.. is the root itself (allowed); a/b/c -> top/.. would be the root's parent through it.
    refused(tmp_path, [member("a/b/top", tarfile.SYMTYPE, linkname="../.."),
                       member("a/b/c", tarfile.SYMTYPE, linkname="top/..")], "'\\.\\.' after a name")


def test_link_then_a_member_written_through_it(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    refused(tmp_path, [member("dir", tarfile.SYMTYPE, linkname="../outside"),
                       member("dir/file", data=b"pwned")], "outside")
    refused(tmp_path, [member("sub", tarfile.DIRTYPE), member("in", tarfile.SYMTYPE, linkname="sub"),
                       member("in/file", data=b"through an inside link")], "writes through 'in'")
    assert list((tmp_path / "outside").iterdir()) == []


def test_existing_link_in_the_target_is_not_written_through(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (target / "node_modules").symlink_to(tmp_path / "outside")
    refused(tmp_path, [member("node_modules/x", data=b"pwned")], "writes through", target=target)
    assert list((tmp_path / "outside").iterdir()) == []


@pytest.mark.parametrize("linkname", ["/etc/passwd", "../outside", "never-extracted", "a-link", "a-dir"])
def test_hard_links_to_anything_but_an_extracted_file(tmp_path: Path, linkname: str) -> None:
    (tmp_path / "outside").write_text("host file")
    refused(tmp_path, [member("a-link", tarfile.SYMTYPE, linkname="x"), member("a-dir", tarfile.DIRTYPE),
                       member("h", tarfile.LNKTYPE, linkname=linkname)], "absolute|'\\.\\.'|hard link")
    assert (tmp_path / "outside").stat().st_nlink == 1


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_device_files(tmp_path: Path, kind: bytes) -> None:
    info, data = member("dev/sda", kind)
    info.devmajor, info.devminor = 8, 0
    refused(tmp_path, [(info, data)], "device")


def test_duplicates_and_type_changes(tmp_path: Path) -> None:
    refused(tmp_path, [member("f", data=b"1"), member("f", tarfile.SYMTYPE, linkname="/etc/passwd")],
            "same path", container_links=True)
    refused(tmp_path, [member("f", data=b"1"), member("f", tarfile.DIRTYPE)], "over a file")
    refused(tmp_path, [member("d", tarfile.DIRTYPE), member("d", data=b"x")], "same path")


def test_fifos_are_skipped_and_pax_names_work(tmp_path: Path) -> None:
    long_name = "p/" + "x" * 120 + "/" + "y" * 150  # over ustar's 100+155: only a pax header can carry it
    info = tarfile.TarInfo(long_name)
    info.size = 3
    fifo = tarfile.TarInfo("fifo")
    fifo.type = tarfile.FIFOTYPE
    data = zstandard.ZstdCompressor().compress(
        fifo.tobuf(tarfile.GNU_FORMAT) + info.tobuf(tarfile.PAX_FORMAT) + b"abc" + bytes(509) + bytes(1024))
    result = unpack(data, tmp_path / "out")
    assert (tmp_path / "out" / long_name).read_bytes() == b"abc"
    assert result.skipped == 1 and not (tmp_path / "out" / "fifo").exists()


def test_name_and_link_rules() -> None:
    assert clean_name("./a//b/./c") == "a/b/c" and clean_name(".") == ""
    check_symlink("a/b/l", "../x/y", container_links=False)  # to a/x/y
    check_symlink("l", "/usr/bin/python3", container_links=True)
    with pytest.raises(UnsafeArchive):
        check_symlink("l", "", container_links=True)
