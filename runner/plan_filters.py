"""What planning takes from the trigger: the filters (a pipeline's and each job's `events`, `paths` and
`paths_ignore`, against the event and the files it changed) and the inputs of a manual run. A pipeline ruled out
has all its jobs `skipped` with the reason; a job ruled out, that job (its dependants run as after any job skipped
by its own filters)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from config import inputs
from config.pipeline import Pipeline
from config.plan import PlannedJob
from config.triggers import DIFFED, event_name, ruled_out
from runner.changes import Mirror, changed_files, uses_paths
from runner.models import JobSpec

log = logging.getLogger(__name__)


def _path_filters(pipeline: Pipeline) -> list[tuple[Sequence[str] | None, Sequence[str] | None]]:
    return [(pipeline.paths, pipeline.paths_ignore),
            *((job.paths, job.paths_ignore) for job in pipeline.jobs.values())]


async def changes_for(mirror: Mirror, spec: JobSpec, sha: str | None, pipeline: Pipeline,
                      pipeline_id: int) -> tuple[str, ...] | None:
    """The files the event changed, when a filter needs them (None: not needed, or unknown: every job runs)."""
    if sha is None or event_name(spec.event) not in DIFFED or not uses_paths(_path_filters(pipeline)):
        return None
    changes = await changed_files(mirror, spec, sha)
    log.info("pipeline %d: %s", pipeline_id, changes.how)
    return changes.files


def skip_reasons(pipeline: Pipeline, planned: Sequence[PlannedJob], event: str,
                 changed: Sequence[str] | None) -> list[str | None]:
    """For each planned job, why it is skipped (the pipeline's filters first, then its job's), or None."""
    top = ruled_out(pipeline.events, pipeline.paths, pipeline.paths_ignore, event, changed)
    reasons: list[str | None] = []
    for job in planned:
        spec = pipeline.jobs.get(job.name)
        own = None if spec is None else ruled_out(spec.events, spec.paths, spec.paths_ignore, event, changed,
                                                  what=f"job {job.name}")
        reasons.append(top or own)
    return reasons


def run_inputs(spec: JobSpec, pipeline: Pipeline | None) -> dict[str, str]:
    """The INPUT_<KEY> variables of the run; ConfigError naming each bad input of a manual run."""
    declared = pipeline.inputs if pipeline is not None else {}
    return inputs.resolve(declared, inputs.from_meta(spec.meta), manual=event_name(spec.event) == "manual")
