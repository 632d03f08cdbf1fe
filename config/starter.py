"""`forgeci init`: detect a project's toolchains from its manifests and lockfiles (config.detect) and write a
starter .forgeci.toml: one job per toolchain, its cache set up for what it installs, comments saying why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from config.detect import PROJECT_KINDS, DetectedJob, detect_go, detect_make, detect_node, detect_rust
from config.detect_python import detect_python
from config.errors import ConfigError, ConfigIssue
from config.pipeline import pipeline_from_dict, pipeline_to_toml

__all__ = ["PIPELINE_FILE", "PROJECT_KINDS", "detect_jobs", "detect_project", "starter_pipeline", "starter_text",
           "write_starter"]

PIPELINE_FILE = ".forgeci.toml"
HELLO = "echo 'forgeci works: add your build and test steps to .forgeci.toml'"
_DETECTORS = {"node": detect_node, "python": detect_python, "go": detect_go, "rust": detect_rust,
              "make": detect_make}
_HEADER = (
    "# forgeci pipeline, written by `forgeci init`{detected}.\n"
    "# Edit the jobs to taste; see the configuration reference in forgeci's README.\n"
    "# `forgeci run` runs it here; on a server, each job's [cache] keeps what its install step installs.\n"
)


def detect_jobs(root: Path) -> list[DetectedJob]:
    """The starter's jobs for `root`, in PROJECT_KINDS order. A Makefile's test target gets a job of its own only
    when no other toolchain is found (it usually wraps that toolchain's tests, which its job already runs)."""
    jobs = [job for kind in PROJECT_KINDS if kind != "make" for job in _DETECTORS[kind](root)]
    return jobs or detect_make(root)


def detect_project(root: Path) -> list[str]:
    """The toolchains `root` uses, in PROJECT_KINDS order (e.g. ["node", "python"])."""
    return list(dict.fromkeys(job.kind for job in detect_jobs(root)))


def _names(jobs: list[DetectedJob]) -> list[str]:
    """`test` and `lint` for one toolchain; `node`, `node-lint`, `python` ... for several."""
    several = len({job.kind for job in jobs}) > 1
    return [(job.kind if job.role == "test" else f"{job.kind}-{job.role}") if several else job.role for job in jobs]


def starter_pipeline(root: Path) -> dict[str, Any]:
    """The starter pipeline for `root` as a dict (the shape pipeline_from_dict takes)."""
    jobs = detect_jobs(root)
    if not jobs:
        return {"steps": [{"name": "hello", "run": HELLO}]}
    return {"jobs": {name: job.to_dict() for name, job in zip(_names(jobs), jobs, strict=True)}}


def starter_text(root: Path, source: str = PIPELINE_FILE) -> str:
    """The .forgeci.toml `forgeci init` writes for `root`, validated as every pipeline is."""
    jobs = detect_jobs(root)
    pipeline = pipeline_from_dict(starter_pipeline(root), source)  # the same validation users get
    kinds = list(dict.fromkeys(job.kind for job in jobs))
    header = _HEADER.format(detected=f" (detected: {', '.join(kinds)})" if kinds else "")
    if not jobs:
        header += ("# Nothing was recognised (package.json, pyproject.toml, setup.py, requirements*.txt, go.mod, "
                   "Cargo.toml,\n# a Makefile with a test target): replace the step with your build and tests.\n")
    if "make" not in kinds and (makefile := _make_note(root)):
        header += makefile
    text = header + "\n" + pipeline_to_toml(pipeline)
    for name, job in zip(_names(jobs), jobs, strict=True):
        comment = "".join(f"# {line}\n" for line in job.why)
        text = text.replace(f"\n[jobs.{name}]\n", f"\n{comment}[jobs.{name}]\n", 1)
    return text


def _make_note(root: Path) -> str:
    from config.detect import make_test_target

    name = make_test_target(root)
    return f"# {name} has a test target too: the jobs below test directly; `make test` may be what you want.\n" \
        if name else ""


def write_starter(root: Path, force: bool = False) -> Path:
    """Write `root/.forgeci.toml` and return its path; an existing file is kept unless `force`."""
    path = root / PIPELINE_FILE
    if path.exists() and not force:
        raise ConfigError(ConfigIssue(str(path), "", "already exists; use --force to overwrite it"))
    path.write_text(starter_text(root, str(path)), encoding="utf-8")
    return path
