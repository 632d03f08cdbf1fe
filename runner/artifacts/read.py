"""Reading a kept artifact back for downloads: the archive as stored, its tar, or one file of it, as chunks."""

from __future__ import annotations

from collections.abc import Generator
from typing import IO, cast

import zstandard

from runner.archive import BLOCK, CHUNK, UnsafeArchive, clean_name
from runner.archive.tar import REGULAR, TarStream, read_members
from runner.errors import ArchiveError, CorruptArchive
from runner.queue import ArtifactRecord
from runner.store import ObjectStore

Chunks = Generator[bytes, None, None]  # close() it when done early: its store stream closes with it


def _object(record: ArtifactRecord) -> str:
    if record.object is None:
        raise ArchiveError(f"job {record.job_id} kept no artifact archive")
    return record.object


def archive_chunks(store: ObjectStore, record: ArtifactRecord) -> Chunks:
    """The archive (`.tar.zst`) as it is in the store. Blocking: iterate it in a thread, close it when done."""
    with store.get_stream(_object(record)) as stream:
        while data := stream.read(CHUNK):
            yield data


def tar_chunks(store: ObjectStore, record: ArtifactRecord) -> Chunks:
    """The archive decompressed: a plain tar of the artifact's files."""
    with store.get_stream(_object(record)) as stream:
        reader = zstandard.ZstdDecompressor().stream_reader(cast(IO[bytes], stream), read_size=CHUNK,
                                                            read_across_frames=True, closefd=False)
        try:
            while data := reader.read(CHUNK):
                yield data
        except zstandard.ZstdError as exc:
            raise CorruptArchive(f"bad zstd data: {exc}") from exc
        finally:
            reader.close()


def member_chunks(store: ObjectStore, record: ArtifactRecord, path: str) -> Chunks:
    """The bytes of file `path` of the artifact: the archive is read through forgeci's tar reader up to that member
    (an S3 range cannot point into a compressed archive), and no further."""
    with store.get_stream(_object(record)) as stream:
        reader = zstandard.ZstdDecompressor().stream_reader(cast(IO[bytes], stream), read_size=CHUNK,
                                                            read_across_frames=True, closefd=False)
        try:
            tar = TarStream(reader)
            for member in read_members(tar):
                try:
                    name = clean_name(member.name)
                except UnsafeArchive:
                    name = None  # never a path of the index: skipped like any other member
                if member.kind in REGULAR and name == path:
                    for view in tar.slices(member.size):
                        yield bytes(view)
                    return
                tar.skip(member.size + (-member.size % BLOCK))
        except zstandard.ZstdError as exc:
            raise CorruptArchive(f"bad zstd data: {exc}") from exc
        finally:
            reader.close()
    raise CorruptArchive(f"{path} is in the index of job {record.job_id}'s artifacts but not in its archive")
