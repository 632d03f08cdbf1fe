"""Artifacts: the files a job keeps (globbed, packed, indexed, in the object store), handed to the jobs that need
them, read back whole or one file at a time for downloads, and kept after a local run."""

from __future__ import annotations

from runner.artifacts.collect import Collected, collect, glob_regex
from runner.artifacts.manager import PREFIX, ArtifactManager, artifact_key, declared
from runner.queue import ArtifactFile, ArtifactRecord

__all__ = ["PREFIX", "ArtifactFile", "ArtifactManager", "ArtifactRecord", "Collected", "artifact_key", "collect",
           "declared", "glob_regex"]
