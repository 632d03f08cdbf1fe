"""The `needs` graph of a pipeline's jobs: checking it, naming its cycles, ordering it."""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

from config.matrix import quoted
from config.schema import Issues

Needs = Mapping[str, Sequence[str]]  # job name -> the jobs it needs, every job in file order


def check_needs(names: Sequence[str], needs: Needs, path: str, issues: Issues) -> None:
    """Unknown, self and repeated needs at `jobs.NAME.needs[i]`, then one `jobs: cycle ...` issue per cycle.

    `names` are all the jobs of the file; `needs` may lack jobs that are invalid for other reasons.
    """
    known = set(names)
    listing = ", ".join(names)
    clean: dict[str, list[str]] = {}
    for job, wanted in needs.items():
        clean[job] = []
        for i, need in enumerate(wanted):
            where = f"{path}.{job}.needs[{i}]"
            if need == job:
                issues.add(where, "a job cannot need itself")
            elif need not in known:
                issues.add(where, f"unknown job {quoted(need)} (jobs: {listing})")
            elif need in clean[job]:
                issues.add(where, f"{quoted(need)} is already needed (needs[{list(wanted).index(need)}])")
            else:
                clean[job].append(need)
    for cycle in cycles(clean):
        issues.add(path, "cycle " + " -> ".join([*cycle, cycle[0]]))


def _components(needs: Needs) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (a file may hold thousands of jobs)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in needs:
        if root in index:
            continue
        work = [(root, iter(needs[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in needs:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(needs[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    found.append(component)
    return found


def cycles(needs: Needs) -> list[list[str]]:
    """One cycle per strongly connected group of jobs, each from its first job in file order, `a` needs `b`..."""
    order = {job: i for i, job in enumerate(needs)}
    out = []
    for component in _components(needs):
        if len(component) < 2:
            continue  # self-needs are reported on their own
        members = set(component)
        start = min(component, key=order.__getitem__)
        # Breadth-first from `start` back to it, inside the component: the shortest cycle through it.
        came: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in came:
            following = []
            for node in frontier:
                for nxt in needs[node]:
                    if nxt in members and nxt not in came:
                        came[nxt] = node
                        following.append(nxt)
            frontier = following
        path = [start]
        while came[path[-1]] != start:
            path.append(came[path[-1]])
        out.append([start, *reversed(path[1:])])
    return sorted(out, key=lambda cycle: order[cycle[0]])


def topological_order(needs: Needs) -> list[str]:
    """Every job after the jobs it needs; among jobs that are ready, the one first in the file goes first."""
    order = {job: i for i, job in enumerate(needs)}
    waiting = {job: len(set(wanted)) for job, wanted in needs.items()}
    dependants: dict[str, list[str]] = {job: [] for job in needs}
    for job, wanted in needs.items():
        for need in set(wanted):
            dependants[need].append(job)
    ready = [order[job] for job, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    names = list(needs)
    out = []
    while ready:
        job = names[heapq.heappop(ready)]
        out.append(job)
        for dependant in dependants[job]:
            waiting[dependant] -= 1
            if waiting[dependant] == 0:
                heapq.heappush(ready, order[dependant])
    if len(out) != len(names):
        raise ValueError("the needs graph has a cycle")
    return out
