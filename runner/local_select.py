"""`forgeci run --job/--with-needs/--step`: which planned jobs of a local run run, and which needs each waits for."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from config.errors import ConfigError
from runner.queue import PlannedJobRow


class SelectionError(ConfigError):
    """The command line names jobs or a step the pipeline cannot give it: a usage error (exit 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, source="forgeci run")


class Planned(Protocol):
    """What selection reads of a planned job (config.plan.PlannedJob and the queue's PlannedJobRow both have it)."""

    @property
    def name(self) -> str: ...

    @property
    def display(self) -> str: ...

    @property
    def needs(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class Named:
    """A job known by its names only: the one job of a run whose file cannot be read yet."""

    name: str
    display: str
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Selection:
    """The jobs to run, by display name, each with the needs it still waits for; and the job `--step` applies to."""

    needs: dict[str, tuple[str, ...]]  # display -> job names, in plan order
    step_job: str | None = None  # the display name of the one job whose single step runs

    def rows(self, rows: Sequence[PlannedJobRow]) -> list[PlannedJobRow]:
        """The selected rows of a plan, their needs cut to the selected jobs (the others count as satisfied)."""
        return [dataclasses.replace(row, needs=self.needs[row.display]) for row in rows if row.display in self.needs]


def listing(planned: Sequence[Planned]) -> str:
    """The jobs, and the members of matrix jobs, as a usage error lists them."""
    parts = []
    for name in dict.fromkeys(p.name for p in planned):
        members = [p.display for p in planned if p.name == name]
        parts.append(name if members == [name] else f"{name} ({len(members)} members: {'; '.join(members)})")
    return ", ".join(parts)


def select(planned: Sequence[Planned], names: Sequence[str] = (), *, with_needs: bool = False,
           step: str | None = None) -> Selection:
    """Which of `planned` a local run runs. `names` are job names (all their members) or members' display names;
    none means every job. `with_needs` adds what the chosen jobs need, transitively; otherwise a chosen job's
    needs that are not chosen count as satisfied. `step` needs exactly one chosen job (the added needs run
    whole). SelectionError on a name the pipeline does not have, or a `step` with more or fewer jobs."""
    by_name: dict[str, list[str]] = {}
    for job in planned:
        by_name.setdefault(job.name, []).append(job.display)
    displays = {job.display for job in planned}
    chosen: dict[str, None] = {}  # ordered set
    for name in names:
        if name in by_name:
            chosen.update(dict.fromkeys(by_name[name]))
        elif name in displays:
            chosen[name] = None
        else:
            raise SelectionError(f"--job {name!r}: the pipeline has no such job or matrix member; its jobs: "
                                 f"{listing(planned)}")
    if not names:
        chosen = dict.fromkeys(job.display for job in planned)
    if step is not None and len(chosen) != 1:
        which = "; ".join(chosen)
        raise SelectionError(f"--step {step!r} runs one step of one job, and {len(chosen)} jobs are selected "
                             f"({which}): pick one with --job (jobs: {listing(planned)})")
    picked = set(chosen)
    if with_needs:
        needs_of = {job.display: job.needs for job in planned}
        todo = list(chosen)
        while todo:
            for need in needs_of[todo.pop()]:
                for member in by_name.get(need, ()):
                    if member not in picked:
                        picked.add(member)
                        todo.append(member)
    kept = {job.name for job in planned if job.display in picked}
    return Selection(needs={job.display: tuple(n for n in job.needs if n in kept)
                            for job in planned if job.display in picked},
                     step_job=next(iter(chosen)) if step is not None else None)
