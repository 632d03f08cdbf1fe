"""A kept artifact as a zip, made while it streams: the archive is read member by member through forgeci's tar
reader and each file deflated into the zip as it goes (zipfile writing to a stream it cannot seek: every entry
carries a data descriptor), so neither the archive nor the zip is ever held whole."""

from __future__ import annotations

import stat
import time
import zipfile
from typing import IO, cast

import zstandard

from runner.archive import BLOCK, CHUNK, UnsafeArchive, clean_name
from runner.archive.tar import REGULAR, TarStream, read_members
from runner.artifacts.read import Chunks, _object
from runner.errors import CorruptArchive
from runner.queue import ArtifactRecord
from runner.store import ObjectStore

ZIP64_FROM = 1 << 31  # entries this large or larger get zip64 sizes up front (zipfile cannot add them later)


class _Sink:
    """The write-only file zipfile writes to: what it wrote waits here until the generator passes it on."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        self.size = 0
        return out


def _info(name: str, mode: int, mtime: float, size: int) -> zipfile.ZipInfo:
    # A zip names its entries in UTF-8: bytes of a tar name that are not (read as surrogates) become U+FFFD.
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    year, *rest = time.localtime(min(max(mtime, 315532800.0), 4354819199.0))[:6]  # zip's 1980..2107
    info = zipfile.ZipInfo(name, (min(max(year, 1980), 2107), *rest))  # type: ignore[arg-type]
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # unix: the mode below means what it says
    info.external_attr = (stat.S_IFREG | (mode & 0o7777)) << 16
    info.file_size = size
    return info


def zip_chunks(store: ObjectStore, record: ArtifactRecord) -> Chunks:
    """The artifact's regular files (the ones its index lists) as a deflated zip, by their paths in it."""
    sink = _Sink()
    with store.get_stream(_object(record)) as stream:
        reader = zstandard.ZstdDecompressor().stream_reader(cast(IO[bytes], stream), read_size=CHUNK,
                                                            read_across_frames=True, closefd=False)
        try:
            with zipfile.ZipFile(cast(IO[bytes], sink), "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
                tar = TarStream(reader)
                for member in read_members(tar):
                    try:
                        name = clean_name(member.name)
                    except UnsafeArchive:
                        name = None  # never a path of the index: left out like any other member
                    if member.kind not in REGULAR or name is None:
                        tar.skip(member.size + (-member.size % BLOCK))
                        continue
                    info = _info(name, member.mode, member.mtime, member.size)
                    with archive.open(info, "w", force_zip64=member.size >= ZIP64_FROM) as out:
                        for view in tar.slices(member.size):
                            out.write(view)
                            if sink.size >= CHUNK:
                                yield sink.take()
                    tar.skip(-member.size % BLOCK)
                    if sink.size:
                        yield sink.take()
            if sink.size:
                yield sink.take()  # the central directory
        except zstandard.ZstdError as exc:
            raise CorruptArchive(f"bad zstd data: {exc}") from exc
        finally:
            reader.close()
