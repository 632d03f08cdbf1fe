"""Cache and snapshot archives: tar + zstd streamed both ways, checksummed, extracted member by member with checks."""

from __future__ import annotations

from runner.archive.base import (
    BLOCK,
    CHUNK,
    LEVEL,
    ArchiveInfo,
    Compressor,
    ExtractInfo,
    Progress,
)
from runner.archive.pack import ArchiveWriter, check_paths
from runner.archive.safety import check_symlink, clean_name
from runner.archive.tar import Member, read_members
from runner.archive.unpack import Extractor, extract
from runner.errors import ArchiveAborted, ArchiveError, CorruptArchive, UnsafeArchive
from runner.streams import Readable

__all__ = [
    "BLOCK", "CHUNK", "LEVEL", "ArchiveAborted", "ArchiveError", "ArchiveInfo", "ArchiveWriter", "Compressor",
    "CorruptArchive", "ExtractInfo", "Extractor", "Member", "Progress", "Readable", "UnsafeArchive", "check_paths",
    "check_symlink", "clean_name", "extract", "read_members",
]
