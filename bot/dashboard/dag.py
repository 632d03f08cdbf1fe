"""A pipeline's graph laid out for the page: jobs in columns by dependency depth, edges for `needs` as SVG paths."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from runner.models import Job, JobState, PipelineRecord, need_depths

# Sizes in CSS pixels; the template positions the boxes and draws the edges with these, so they live in one place.
BOX_W = 232
BOX_H = 56
COL_GAP = 60  # room for the edges between two columns
ROW_GAP = 12
LANE_H = 12  # the slot an edge takes where it passes a column it skips
HEAD_H = 26  # the column's heading above its boxes
FAILED = frozenset({JobState.failure, JobState.timeout, JobState.error})


def job_key(job: Job) -> str:
    """The name `needs` refer to: every member of a matrix shares it (a job of no pipeline has none)."""
    return job.name or job.display or f"#{job.id}"


def member_of(job: Job) -> str:
    """A matrix member's values (`python=3.12, db=sqlite`) from its display name `test (python=3.12, db=sqlite)`;
    "" for a job that is no member."""
    name, display = job.name or "", job.display or ""
    if name and display.startswith(f"{name} (") and display.endswith(")"):
        return display[len(name) + 2:-1]
    return ""


def depths(jobs: Sequence[Job]) -> dict[str, int]:
    """Each job name's depth (runner.models.need_depths over the jobs' keys, see job_key)."""
    needs: dict[str, set[str]] = defaultdict(set)
    for job in jobs:
        needs[job_key(job)].update(job.needs)
    return need_depths(needs)


@dataclass(frozen=True)
class Node:
    """One job's box: its column (depth), and its top-left corner."""

    job: Job
    column: int
    x: int
    y: int
    named: bool = True  # False: a matrix member in a column of its matrix alone (the heading names it)

    @property
    def middle(self) -> int:
        return self.y + BOX_H // 2


@dataclass(frozen=True)
class Edge:
    """A `needs` arrow from the needed job's box to its dependant's; `state` styles it (the need's progress)."""

    source: Node
    target: Node
    path: str
    state: str  # done | failed | pending


@dataclass(frozen=True)
class Column:
    depth: int
    names: list[str]  # the job names in it: ["test"] for a matrix, ["b", "c"] for a diamond's middle
    x: int
    count: int


@dataclass(frozen=True)
class Graph:
    nodes: list[Node]
    edges: list[Edge]
    columns: list[Column]
    width: int
    height: int


def _edge_state(job: Job) -> str:
    if job.state is JobState.success:
        return "done"
    if job.state in FAILED:
        return "failed"
    return "pending" if not job.state.is_terminal else "off"  # cancelled or skipped: nothing flows on


def _curve(x1: int, y1: int, x2: int, y2: int) -> str:
    """An S-curve (a path's continuation) from (x1, y1) to (x2, y2), leaving and arriving horizontally."""
    bend = max(20, (x2 - x1) // 2)
    return f" C{x1 + bend} {y1}, {x2 - bend} {y2}, {x2} {y2}"


@dataclass
class _Slot:
    """A place in a column: a job's box, or the lane of an edge that passes a column it skips (so the edge never
    runs behind a box and seems to come from it)."""

    job: Job | None
    lane: tuple[str, str] | None  # (need, dependant) names of a lane
    height: int
    y: int = 0

    @property
    def middle(self) -> int:
        return self.y + self.height // 2


def layout(jobs: Sequence[Job]) -> Graph:
    """Place the jobs: one column per depth; inside a column, ordered by where their needs sit (the mean height of
    what they need, so edges run as level as they can), members of a matrix together in plan order; each column
    centred on the tallest. An edge that skips columns gets a lane of its own in each column it passes."""
    if not jobs:
        return Graph([], [], [], 0, 0)
    depth_of = depths(jobs)
    needs_of = {job_key(job): [n for n in dict.fromkeys(job.needs) if n in depth_of] for job in reversed(jobs)}
    columns_of: dict[int, list[_Slot]] = defaultdict(list)
    for job in jobs:
        columns_of[depth_of[job_key(job)]].append(_Slot(job, None, BOX_H))
    lanes: dict[tuple[str, str, int], _Slot] = {}
    for name, needs in needs_of.items():
        for need in needs:
            for depth in range(depth_of[need] + 1, depth_of[name]):
                lanes[need, name, depth] = _Slot(None, (need, name), LANE_H)
                columns_of[depth].append(lanes[need, name, depth])
    extent = {d: sum(s.height for s in slots) + (len(slots) - 1) * ROW_GAP for d, slots in columns_of.items()}
    height = HEAD_H + max(extent.values())
    boxes: dict[str, list[_Slot]] = defaultdict(list)

    def incoming(need: str, name: str, depth: int) -> list[_Slot]:
        """Where an edge from `need` to `name` comes into column `depth`: from the need's boxes, or its lane."""
        return boxes[need] if depth_of[need] == depth - 1 else [lanes[need, name, depth - 1]]

    def centre(slot: _Slot, depth: int) -> float:
        if slot.job is not None:
            name = job_key(slot.job)
            ys = [s.middle for need in needs_of[name] for s in incoming(need, name, depth)]
        else:
            assert slot.lane is not None
            ys = [s.middle for s in incoming(*slot.lane, depth)]
        return sum(ys) / len(ys) if ys else 0.0

    nodes: list[Node] = []
    columns: list[Column] = []
    for depth in sorted(columns_of):
        slots = columns_of[depth]
        if depth:
            slots.sort(key=lambda slot: centre(slot, depth))  # stable: a matrix stays together, in plan order
        y = HEAD_H + (height - HEAD_H - extent[depth]) // 2
        for slot in slots:
            slot.y, y = y, y + slot.height + ROW_GAP
        placed = [slot.job for slot in slots if slot.job is not None]
        names = list(dict.fromkeys(job_key(job) for job in placed))
        alone = len(names) == 1
        x = depth * (BOX_W + COL_GAP)
        for slot in slots:
            if slot.job is not None:
                boxes[job_key(slot.job)].append(slot)
                nodes.append(Node(slot.job, depth, x, slot.y, named=not (alone and member_of(slot.job))))
        columns.append(Column(depth, names, x, len(placed)))
    node_of = {node.job.id: node for node in nodes}
    edges = []
    for node in nodes:
        name = job_key(node.job)
        for need in needs_of[name]:
            passes = [lanes[need, name, d] for d in range(depth_of[need] + 1, node.column)]
            for source in boxes[need]:
                start = node_of[source.job.id]  # type: ignore[union-attr]
                x, y, path = start.x + BOX_W, start.middle, f"M{start.x + BOX_W} {start.middle}"
                for lane, depth in zip(passes, range(depth_of[need] + 1, node.column)):
                    lane_x = depth * (BOX_W + COL_GAP)
                    path += _curve(x, y, lane_x, lane.middle) + f" H{lane_x + BOX_W}"
                    x, y = lane_x + BOX_W, lane.middle
                path += _curve(x, y, node.x, node.middle)
                edges.append(Edge(start, node, path, _edge_state(start.job)))
    width = (max(depth_of.values()) + 1) * (BOX_W + COL_GAP) - COL_GAP
    return Graph(nodes, edges, columns, width, height)


def state_counts(jobs: Sequence[Job]) -> dict[str, int]:
    """How many jobs are in each state, in the order the page lists them (most telling first)."""
    order = ("failure", "timeout", "error", "running", "queued", "success", "cancelled", "skipped")
    counts = {state: 0 for state in order}
    for job in jobs:
        counts[str(job.state)] += 1
    return {state: n for state, n in counts.items() if n}


def span(jobs: Sequence[Job], now: float) -> float | None:
    """First job queued to last job done (the metrics' end-to-end duration); to now while a job is unfinished."""
    if not jobs:
        return None
    first = min(job.queued_at for job in jobs)
    if any(not job.state.is_terminal for job in jobs):
        return now - first
    return max(job.finished_at or job.queued_at for job in jobs) - first


@dataclass(frozen=True)
class PipelineRow:
    """A pipeline as the overview lists it: the record, its jobs in graph order, its duration and state counts."""

    record: PipelineRecord
    jobs: list[Job]
    duration: float | None
    counts: dict[str, int]


def pipeline_row(record: PipelineRecord, jobs: Sequence[Job], now: float) -> PipelineRow:
    depth = depths(jobs)
    ordered = sorted(jobs, key=lambda job: depth[job_key(job)])  # stable: plan order inside a depth
    return PipelineRow(record, ordered, span(jobs, now), state_counts(jobs))
