"""The plan phase's rules: which pipeline a job runs, whether it applies to the ref, which steps, whether a resume fits."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from config.errors import ConfigError
from config.pipeline import Pipeline, Step, load_pipeline, pipeline_from_dict
from runner.cache import CachePlan
from runner.models import JobSpec, JobState, Outcome, SnapshotRecord
from runner.retry import Resume

PIPELINE_FILE = ".forgeci.toml"


@dataclass(frozen=True)
class Plan:
    """What the plan phase decided, before any container starts."""

    pipeline: Pipeline
    steps: tuple[Step, ...]  # the ones to run (`--step` keeps one)
    image: str
    caches: tuple[CachePlan, ...]  # the job's cache entries; none: nothing to restore or save
    env: Mapping[str, str]  # the job's environment; each step's env goes on top
    timeout: float  # seconds for the whole job


def read_pipeline(spec: JobSpec, workspace: Path) -> Pipeline:
    """The submitted pipeline, else the checkout's `.forgeci.toml`. ConfigError when it is missing or invalid."""
    if spec.pipeline is not None:
        return pipeline_from_dict(spec.pipeline, "submitted pipeline")
    path = workspace / PIPELINE_FILE
    if not path.is_file():
        raise ConfigError(f"the repository has no {PIPELINE_FILE} at its root (forgeci init writes one)",
                          source=PIPELINE_FILE)
    return load_pipeline(path)


def invalid_pipeline(exc: ConfigError, say: Callable[[str], None]) -> Outcome:
    """Every issue in the log; the first (and how many more) as the job's error."""
    for issue in exc.issues:
        say(f"invalid pipeline: {issue}")
    first = exc.issues[0] if exc.issues else exc
    more = f" (+{len(exc.issues) - 1} more)" if len(exc.issues) > 1 else ""
    return Outcome(JobState.failure, f"invalid pipeline: {first}{more}")


def filtered_ref(spec: JobSpec) -> str:
    """The ref the `branches` filter looks at: a pull request's target branch, else the job's own ref."""
    return spec.base_ref if spec.pr_number is not None and spec.base_ref else spec.ref


def skipped(spec: JobSpec, pipeline: Pipeline) -> str | None:
    """Why the job is skipped (its ref is not in the pipeline's `branches`), or None when the pipeline applies."""
    if pipeline.applies_to(filtered_ref(spec)):
        return None
    return f"skipped: {spec.ref} is not in the pipeline's branches {list(pipeline.branches)}"


def select_steps(pipeline: Pipeline, only_step: str | None) -> tuple[Step, ...] | Outcome:
    """The pipeline's steps, or only the one named `only_step` (`forgeci run --step`)."""
    if only_step is None:
        return pipeline.steps
    steps = tuple(s for s in pipeline.steps if s.name == only_step)
    if not steps:
        names = ", ".join(s.name for s in pipeline.steps)
        return Outcome(JobState.failure, f"no step named {only_step!r} (steps: {names})")
    return steps


def resume_mismatch(steps: tuple[Step, ...], resume: Resume, snapshot: SnapshotRecord) -> str | None:
    """Why a retry cannot resume at `resume.step` (the pipeline changed under it), or None when it can."""
    if resume.step >= len(steps) or steps[resume.step].name != snapshot.failed_step_name:
        return (f"cannot resume: step {resume.step + 1} of the pipeline is not "
                f"{snapshot.failed_step_name!r}, the step that failed in job {resume.job_id}")
    return None


def missing_image_message(image: str) -> str:
    """The job's error (and log line) when the image its pipeline names does not exist."""
    return (f"image {image} does not exist: the pipeline's `image` names an image this runner does not have "
            f"(pull or build it, or change the pipeline)")
