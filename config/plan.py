"""A pipeline planned: its jobs checked, matrices expanded, each member a single-job Pipeline in dependency order."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from config.graph import check_needs, topological_order
from config.images import image_texts, substitute_image
from config.matrix import (
    MAX_COMBINATIONS,
    NAME,
    NAME_RULE,
    Value,
    Values,
    check_entries,
    combinations,
    display_name,
    env_name,
    expand_matrix,
    matrix_var,
    needs_var,
    quoted,
    references,
    substitute,
    value_text,
)
from config.schema import Issues, describe, key_path
from config.services import MAX_SERVICES, Service, merged_services

if TYPE_CHECKING:  # config.pipeline imports this module; the planner needs its classes only as types
    from config.pipeline import JobSpec, Pipeline, Step

__all__ = ["DEFAULT_JOB", "PlannedJob", "check_jobs", "env_name", "expand", "expand_into", "matrix_var",
           "members_of", "needs_var"]

DEFAULT_JOB: Final = "ci"  # the job of a pipeline written as top-level [[steps]], unless `name` says otherwise
MAX_NAME: Final = 100  # job names end up in statuses, URLs and variable names


@dataclass(frozen=True, kw_only=True)
class PlannedJob:
    """One job to run: a job of the file, or one member of its matrix, with its effective settings."""

    name: str  # the job's key in [jobs]; what `needs` name
    display: str  # `test (python=3.12, db=sqlite)`; the name itself without a matrix
    matrix: dict[str, Value]  # this member's values, in display order; {} without a matrix
    needs: tuple[str, ...]  # job names: a dependant of a matrix job waits for all its members
    condition: str  # `if`: success | failure | always
    continue_on_error: bool
    fail_fast: bool
    max_parallel: int | None
    pipeline: Pipeline  # a single-job pipeline: what the executor runs for this member


def members_of(planned: Sequence[PlannedJob], job: str) -> tuple[str, ...]:
    """The display names of job `job`'s members (just `job` when it has no matrix), in plan order."""
    return tuple(p.display for p in planned if p.name == job)


def check_jobs(names: Sequence[str], jobs: Mapping[str, JobSpec], path: str, issues: Issues) -> None:
    """What a [jobs] table must satisfy beyond each job's own keys: names, needs (no cycles), matrix keys.

    `names` are all the table's keys; `jobs` the ones whose tables are valid.
    """
    if not names:
        issues.add(path, "expected at least one [jobs.NAME] table, got an empty table")
    mangled: dict[str, str] = {}
    for name in names:
        if not NAME.fullmatch(name) or len(name) > MAX_NAME:
            issues.add(path, f"expected job names of {NAME_RULE}, at most {MAX_NAME} long, got {describe(name)}")
        elif env_name(name) in mangled:  # their outputs would share NEEDS_<JOB>_* variables
            issues.add(key_path(path, name), f"{quoted(mangled[env_name(name)])} and {quoted(name)} are the same "
                                             f"name in variables (NEEDS_{env_name(name)}_...)")
        mangled.setdefault(env_name(name), name)
    check_needs(names, {name: spec.needs for name, spec in jobs.items()}, path, issues)
    for name, spec in jobs.items():
        where = key_path(path, name)
        check_entries(spec.matrix, spec.matrix_exclude, spec.matrix_include, where, issues)
        if spec.if_ == "failure" and not spec.needs:
            issues.add(f"{where}.if", '"failure" runs a job when one of its needs failed, and this job has no needs')


def expand(pipeline: Pipeline, source: str = "pipeline") -> tuple[PlannedJob, ...]:
    """The jobs to run for `pipeline`, in dependency order (ties in file order), members of a job together.

    A pipeline of top-level [[steps]] is one job, `ci` (or its `name`), whose pipeline is `pipeline` itself.
    Raises ConfigError naming every problem (a pipeline read by pipeline_from_dict has none left).
    """
    issues = Issues(source)
    if pipeline.steps and pipeline.jobs:
        issues.add("steps", "top-level [[steps]] cannot be used with [jobs]: move them into a [jobs.NAME] table")
    elif not pipeline.steps and not pipeline.jobs:
        issues.add("steps", "expected at least one [[steps]] table, or [jobs.NAME] tables")
    elif pipeline.jobs:
        check_jobs(list(pipeline.jobs), pipeline.jobs, "jobs", issues)
    issues.raise_if_any()
    planned = expand_into(pipeline, issues)
    issues.raise_if_any()
    return planned


def expand_into(pipeline: Pipeline, issues: Issues) -> tuple[PlannedJob, ...]:
    """`expand` for a pipeline whose form and [jobs] table are checked; problems go to `issues`."""
    if not pipeline.jobs:
        name = pipeline.name or DEFAULT_JOB
        return (PlannedJob(name=name, display=name, matrix={}, needs=(), condition="success",
                           continue_on_error=False, fail_fast=True, max_parallel=None, pipeline=pipeline),)
    sizes = {name: combinations(spec.matrix, spec.matrix_include) for name, spec in pipeline.jobs.items()}
    if sum(sizes.values()) > MAX_COMBINATIONS:  # bounds the work of a whole file, not just of each job
        for name in (name for name, size in sizes.items() if size > MAX_COMBINATIONS):
            spec = pipeline.jobs[name]
            expand_matrix(name, spec.matrix, spec.matrix_exclude, spec.matrix_include, f"jobs.{name}", issues)
        if max(sizes.values()) <= MAX_COMBINATIONS:
            issues.add("jobs", f"the matrices make {sum(sizes.values())} combinations in all; at most "
                               f"{MAX_COMBINATIONS} can be expanded")
        return ()
    planned: list[PlannedJob] = []
    said: set[tuple[str, str]] = set()
    for name in topological_order({name: spec.needs for name, spec in pipeline.jobs.items()}):
        planned.extend(_members(pipeline, name, pipeline.jobs[name], said, issues))
    return tuple(planned)


def _texts(top: Pipeline, name: str, spec: JobSpec) -> Iterator[tuple[str, str]]:
    """Every (key path, text) of a job where `${{ matrix.KEY }}` is substituted, with the path it is written at."""
    own = spec.image is not None
    yield from image_texts(spec.image if own else top.image, f"jobs.{name}.image" if own else "image")
    for key, value in top.env.items():
        if key not in spec.env:
            yield key_path("env", key), value
    for key, value in spec.env.items():
        yield key_path(f"jobs.{name}.env", key), value
    for i, step in enumerate(spec.steps):
        where = f"jobs.{name}.steps[{i}]"
        yield f"{where}.name", step.name
        yield f"{where}.run", step.run
        for key, value in step.env.items():
            yield key_path(f"{where}.env", key), value
    for service, definition in merged_services(top.services, spec.services).items():
        where = key_path(f"jobs.{name}.services" if service in spec.services else "services", service)
        yield from _service_texts(where, definition)


def _service_texts(where: str, service: Service) -> Iterator[tuple[str, str]]:
    yield f"{where}.image", service.image
    for key, value in service.env.items():
        yield key_path(f"{where}.env", key), value
    for i, arg in enumerate(service.command or ()):
        yield f"{where}.command[{i}]", arg
    if service.ready is not None:
        yield f"{where}.ready", service.ready


def _check_references(top: Pipeline, name: str, spec: JobSpec, members: list[Values] | None,
                      said: set[tuple[str, str]], issues: Issues) -> bool:
    """Whether every `${{ ... }}` of the job is a matrix key each member has; `said` keeps top-level texts, which
    every job inherits, from being reported once per job."""
    keys = list(dict.fromkeys(k for values in members or () for k in values))
    fine = True
    for path, text in _texts(top, name, spec):
        found, problems = references(text)
        in_job = "" if path.startswith("jobs.") else f" (in job {quoted(name)})"
        for key in found:
            if members is None:
                problems.append(f"${{{{ matrix.{key} }}}}: job {quoted(name)} has no matrix")
            elif key not in keys:
                problems.append(f"unknown matrix key {quoted(key)} (matrix keys: {', '.join(keys)}){in_job}")
            elif lacking := [display_name(name, v) for v in members if key not in v]:
                more = f" and {len(lacking) - 1} more" if len(lacking) > 1 else ""
                problems.append(f"${{{{ matrix.{key} }}}}: member {quoted(lacking[0])}{more} has no {key}")
        fine = fine and not problems
        for message in problems:
            if (path, message) not in said:
                said.add((path, message))
                issues.add(path, message)
    return fine


def _members(top: Pipeline, name: str, spec: JobSpec, said: set[tuple[str, str]],
             issues: Issues) -> list[PlannedJob]:
    before = issues.count
    members = expand_matrix(name, spec.matrix, spec.matrix_exclude, spec.matrix_include, f"jobs.{name}", issues)
    if members == []:
        return []  # the matrix itself is wrong: its references would only repeat that
    if not _check_references(top, name, spec, members, said, issues) or issues.count > before:
        return []
    planned = []
    for values in members if members is not None else [None]:
        member = _member_pipeline(top, name, spec, values or {}, display_name(name, values), issues)
        planned.append(PlannedJob(
            name=name, display=display_name(name, values), matrix=dict(values or {}), needs=spec.needs,
            condition=spec.if_, continue_on_error=spec.continue_on_error, fail_fast=spec.fail_fast,
            max_parallel=spec.max_parallel, pipeline=member))
    return planned


def _member_pipeline(top: Pipeline, name: str, spec: JobSpec, values: Values, display: str,
                     issues: Issues) -> Pipeline:
    """The single-job Pipeline of one member: the job's keys over the top-level defaults, matrix substituted."""
    def sub(text: str, path: str) -> str:
        found = substitute(text, values)
        if not found and text:  # a name, command or image made empty by an empty matrix value
            issues.add(path, f"empty in {quoted(display)}")
        return found

    env = {**top.env, **spec.env}
    # Matrix variables go over the file's env: they say which member this is, and nothing else may.
    env = {k: substitute(v, values) for k, v in env.items()} | {matrix_var(k): value_text(v)
                                                                  for k, v in values.items()}
    steps: list[Step] = []
    first: dict[str, int] = {}
    for i, step in enumerate(spec.steps):
        where = f"jobs.{name}.steps[{i}]"
        step_name = sub(step.name, f"{where}.name")
        if step_name in first:
            issues.add(f"{where}.name", f"duplicate step name {quoted(step_name)} in {quoted(display)} "
                                        f"(also steps[{first[step_name]}])")
        first.setdefault(step_name, i)
        steps.append(dataclasses.replace(step, name=step_name, run=sub(step.run, f"{where}.run"),
                                         env={k: substitute(v, values) for k, v in step.env.items()}))
    image = spec.image if spec.image is not None else top.image
    return dataclasses.replace(
        top, name=name, jobs={}, steps=tuple(steps),
        services=_member_services(top, name, spec, values, display, issues),
        image=None if image is None else substitute_image(image, sub, f"jobs.{name}.image" if spec.image else "image"),
        timeout=spec.timeout if spec.timeout is not None else top.timeout,
        runs_on=tuple(sorted(set(spec.runs_on if spec.runs_on is not None else top.runs_on))),
        branches=spec.branches if spec.branches is not None else top.branches,
        snapshot=spec.snapshot if spec.snapshot is not None else top.snapshot,
        secrets=spec.secrets if spec.secrets is not None else top.secrets,
        cache=spec.cache if spec.cache is not None else top.cache,
        artifacts=spec.artifacts if spec.artifacts is not None else top.artifacts,
        artifacts_from=spec.artifacts_from if spec.artifacts_from is not None else top.artifacts_from,
        env=env)


def _member_services(top: Pipeline, name: str, spec: JobSpec, values: Values, display: str,
                     issues: Issues) -> dict[str, Service]:
    """The job's services over the top-level ones, `${{ matrix.KEY }}` substituted in image, env, command, ready."""
    services = merged_services(top.services, spec.services)
    if len(services) > MAX_SERVICES:
        issues.add(f"jobs.{name}.services", f"at most {MAX_SERVICES} services per job, got {len(services)} "
                                            f"with the top-level ones")
    for service, definition in services.items():
        if not substitute(definition.image, values):
            where = key_path(f"jobs.{name}.services" if service in spec.services else "services", service)
            issues.add(f"{where}.image", f"empty in {quoted(display)}")
    return {service: dataclasses.replace(
        definition, image=substitute(definition.image, values),
        env={k: substitute(v, values) for k, v in definition.env.items()},
        command=None if definition.command is None else tuple(substitute(a, values) for a in definition.command),
        ready=None if definition.ready is None else substitute(definition.ready, values))
        for service, definition in services.items()}
