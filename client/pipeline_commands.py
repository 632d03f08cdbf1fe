"""The CLI's pipeline commands (pipelines, pipeline, cancel/retry --pipeline) and `submit --follow`'s follower of a
whole pipeline: calls through client.api, human output."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from itertools import groupby
from typing import TextIO

from client.api import Client
from client.exits import EXIT_FAILED, EXIT_OK
from client.models import LogEnd, PipelineInfo, PipelineJob
from client.output import ago, duration, table

# Logs followed at once: each is an open stream, and the HTTP client pools at most 100 connections. A job beyond
# them is followed when a slot frees; its log is read from its first line then, so nothing is lost.
FOLLOWERS = 16
POLL = 0.5  # seconds between looks at the pipeline while following it
Announce = Callable[[Client, int, tuple[int, ...]], str]


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "–"


async def pipelines(client: Client, status: str | None, repo: str | None, limit: int, as_json: bool) -> int:
    """`forgeci pipelines`: newest first, one line each."""
    found = (await client.pipelines(status=status, repo=repo, limit=limit)).pipelines
    if as_json:
        print(json.dumps([p.raw for p in found], indent=2))
        return EXIT_OK
    if not found:
        print("no pipelines", file=sys.stderr)
        return EXIT_OK
    rows = [["ID", "STATE", "JOBS", "REPO", "REF", "SHA", "CREATED", "DURATION"]]
    for p in found:
        rows.append([str(p.id), p.state, f"{p.jobs_done}/{p.jobs_total}", p.repo, p.ref, _short(p.sha),
                     ago(p.created_at), duration(p.duration)])
    table(rows, sys.stdout)
    return EXIT_OK


def _note(job: PipelineJob) -> str:
    if job.state == "queued":
        return job.wait_reason or ""
    return job.error or ""


def describe_pipeline(p: PipelineInfo) -> str:
    """A pipeline as `forgeci pipeline` prints it: its trigger, then its jobs as a tree by dependency depth (the
    columns of the dashboard's graph), each with its state, duration and why it waits or how it failed."""
    took = f", {duration(p.duration)} end to end" if p.duration is not None else ""
    lines = [f"pipeline {p.id}: {p.state} ({p.jobs_done} of {p.jobs_total} jobs done{took})",
             f"  repo   {p.repo}", f"  ref    {p.ref} @ {_short(p.sha)}    event {p.event}"]
    if p.error:
        lines.append(f"  error  {p.error}")
    if not p.jobs:
        lines.append("  no jobs yet: still planning" if not p.terminal else "  no jobs")
        return "\n".join(lines)
    name_width = max(len(job.display) for job in p.jobs)
    needs_width = max((len(", ".join(job.needs)) for job in p.jobs), default=0)
    id_width = max(len(str(job.id)) for job in p.jobs)
    levels = [(depth, list(jobs)) for depth, jobs in groupby(sorted(p.jobs, key=lambda j: (j.depth, j.id)),
                                                             key=lambda j: j.depth)]
    for n, (depth, jobs) in enumerate(levels):
        last_level = n == len(levels) - 1
        lines.append(f"  {'└' if last_level else '├'}─ depth {depth}")
        stem = "   " if last_level else "│  "
        for i, job in enumerate(jobs):
            branch = "└─" if i == len(jobs) - 1 else "├─"
            needs = ("<- " + ", ".join(job.needs)) if job.needs else ""
            shown = duration(job.duration) if job.duration is not None else "–"
            row = (f"  {stem}{branch} {job.id:>{id_width}} {job.display:<{name_width}}  "
                   f"{needs:<{needs_width + 3}}  {job.state:<9} {shown:>7}  {_note(job)}")
            lines.append(row.rstrip())
    return "\n".join(lines)


async def pipeline(client: Client, pipeline_id: int, as_json: bool) -> int:
    """`forgeci pipeline ID`: the pipeline and its jobs."""
    found = await client.pipeline(pipeline_id)
    print(json.dumps(found.raw, indent=2) if as_json else describe_pipeline(found))
    return EXIT_OK


async def cancel(client: Client, pipeline_id: int) -> int:
    """`forgeci cancel --pipeline ID`."""
    if await client.cancel_pipeline(pipeline_id) == "cancelled":
        print(f"pipeline {pipeline_id} cancelled")
    else:
        print(f"pipeline {pipeline_id}: cancelled; its running jobs are stopping")
    return EXIT_OK


async def retry(client: Client, pipeline_id: int, failed_only: bool) -> int:
    """`forgeci retry --pipeline ID [--failed]`: a new pipeline at the same sha, or its failed jobs again."""
    submitted = await client.retry_pipeline(pipeline_id, failed_only=failed_only)
    page = f"{client.server}/dashboard/pipelines/{submitted.pipeline}"
    ids = ", ".join(map(str, submitted.jobs))
    if failed_only:
        print(f"pipeline {pipeline_id}: {len(submitted.jobs)} job{'s' if len(submitted.jobs) != 1 else ''} "
              f"queued again ({ids}): {page}")
    elif submitted.planning:
        print(f"pipeline {submitted.pipeline} (retry of pipeline {pipeline_id}) is still planning: {page}")
    else:
        print(f"pipeline {submitted.pipeline} queued with {len(submitted.jobs)} jobs ({ids}) "
              f"(retry of pipeline {pipeline_id}): {page}")
    return EXIT_OK


async def follow_pipeline(client: Client, pipeline_id: int, *, out: TextIO | None = None,
                          err: TextIO | None = None, announce: Announce | None = None, poll: float = POLL) -> int:
    """Print the log of every job of the pipeline as it runs (each line prefixed with `[display name]` when it has
    several jobs, as `forgeci run` does), then how each job ended, and the pipeline; exit 0 only if it succeeded
    (or its filters skipped every job).

    A pipeline still planning is waited for (`announce` says what it became once planned). A job is followed from
    its start (or its end, for one that never ran), so parallel jobs' lines interleave as they are written.
    """
    out, err = out or sys.stdout, err or sys.stderr
    followers: dict[int, asyncio.Task[None]] = {}
    slots = asyncio.Semaphore(FOLLOWERS)
    try:
        while True:
            found = await client.pipeline(pipeline_id)
            if found.jobs and announce is not None:
                print(announce(client, pipeline_id, tuple(job.id for job in found.jobs)), file=err)
                announce = None
            several = len(found.jobs) > 1
            for job in found.jobs:
                if job.id not in followers and job.state != "queued":
                    prefix = f"[{job.display}] " if several else ""
                    followers[job.id] = asyncio.create_task(_follow_job(client, job.id, prefix, slots, out, err))
            if found.terminal and len(followers) == len(found.jobs):
                break
            await asyncio.sleep(poll)
        await asyncio.gather(*followers.values())
    finally:
        for task in followers.values():
            task.cancel()
    if len(found.jobs) != 1:  # one job's end line said it all
        print(f"pipeline {pipeline_id}: {found.state} ({len(found.jobs)} jobs, {duration(found.duration)})"
              + (f": {found.error}" if found.error else ""), file=err)
    return EXIT_OK if found.state in ("success", "skipped") else EXIT_FAILED  # skipped: nothing failed


async def _follow_job(client: Client, job_id: int, prefix: str, slots: asyncio.Semaphore, out: TextIO,
                      err: TextIO) -> None:
    async with slots:
        async for item in client.read_log(job_id, follow=True):
            if isinstance(item, LogEnd):
                break
            out.write(f"{prefix}{item.text}\n")  # one write per line: parallel jobs never split a line
            out.flush()
        job = await client.job(job_id)
    print(f"{prefix}job {job_id}: {job.state} ({duration(job.duration)})" + (f": {job.error}" if job.error else ""),
          file=err)
