"""The CLI's client commands (submit, jobs, status, logs, cancel, retry): calls through client.api, human output."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TextIO

from client.api import Client
from client.errors import APIError, AuthFailed, ClientError, ServerUnreachable
from client.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from client.models import JobInfo, LogEnd
from config.durations import format_duration

USAGE_STATUSES = frozenset({400, 404, 413, 415})  # the request was wrong, not the job: exit 2


def run(server: str, token: str | None, work: Callable[[Client], Awaitable[int]]) -> int:
    """Run one command against the server; an unreachable server, a refused token or bad input exit 2."""

    async def main() -> int:
        async with Client(server, token, user_agent="forgeci-cli") as client:
            return await work(client)

    try:
        return asyncio.run(main())
    except (ServerUnreachable, AuthFailed) as exc:
        print(f"forgeci: {exc}", file=sys.stderr)
        if isinstance(exc, ServerUnreachable):
            print("  is `forgeci serve` running there? Point --server or $FORGECI_SERVER at it.", file=sys.stderr)
        return EXIT_USAGE
    except APIError as exc:
        print(f"forgeci: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.status in USAGE_STATUSES else EXIT_FAILED
    except ClientError as exc:
        print(f"forgeci: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _duration(seconds: float | None) -> str:
    return "–" if seconds is None else format_duration(max(0.0, seconds))


def _ago(ts: float | None) -> str:
    if ts is None:
        return "–"
    delta = max(0.0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{int(delta // size)}{unit} ago"
    return f"{int(delta)}s ago"


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)


async def follow(client: Client, job_id: int, *, follow: bool, out: TextIO | None = None,
                 err: TextIO | None = None) -> int:
    """Print the job's log; with `follow`, until the job ends. Exit 0 for success, 1 for another end."""
    out, err = out or sys.stdout, err or sys.stderr
    end: LogEnd | None = None
    async for item in client.read_log(job_id, follow=follow):
        if isinstance(item, LogEnd):
            end = item
            break
        out.write(item.text + "\n")
        out.flush()
    if not follow:
        return EXIT_OK
    state = end.state if end else None
    job = await client.job(job_id)
    print(f"job {job_id}: {state} ({_duration(job.duration)})" + (f": {job.error}" if job.error else ""), file=err)
    return EXIT_OK if state == "success" else EXIT_FAILED


async def submit(client: Client, repo: str, ref: str, sha: str | None, priority: int | None,
                 follow_log: bool) -> int:
    """Submit a pipeline and say what it became; with `follow_log`, print its first job's log until it ends (a
    pipeline still planning is waited for), then, for a pipeline of several jobs, wait for the pipeline's end."""
    info = sys.stderr if follow_log else sys.stdout  # --follow: stdout is the log alone
    submitted = await client.submit(repo, ref, sha=sha, priority=priority)
    if submitted.job is None:
        assert submitted.pipeline is not None  # Submission.from_dict refuses an answer with neither
        why = (await client.pipeline(submitted.pipeline)).error
        print(f"pipeline {submitted.pipeline} is still planning" + (f" ({why})" if why else "")
              + ": the server keeps trying to fetch its repository", file=info)
    elif len(submitted.jobs) == 1:
        print(f"job {submitted.job} queued: {client.server}/dashboard/jobs/{submitted.job}", file=info)
    else:
        print(f"pipeline {submitted.pipeline} queued with {len(submitted.jobs)} jobs "
              f"({', '.join(map(str, submitted.jobs))}): {client.server}/dashboard/jobs/{submitted.job}", file=info)
    if not follow_log:
        return EXIT_OK
    job_id = await client.first_job(submitted)
    if job_id is None:
        assert submitted.pipeline is not None
        ended = await client.pipeline(submitted.pipeline)
        print(f"pipeline {ended.id}: {ended.state}" + (f": {ended.error}" if ended.error else ""), file=info)
        return EXIT_FAILED
    if submitted.job is None:
        print(f"job {job_id} queued: {client.server}/dashboard/jobs/{job_id}", file=info)
    code = await follow(client, job_id, follow=True)
    if submitted.pipeline is None or len((await client.pipeline(submitted.pipeline)).job_ids) <= 1:
        return code
    return await _pipeline_end(client, submitted.pipeline, info)


async def _pipeline_end(client: Client, pipeline_id: int, out: TextIO, poll: float = 0.5) -> int:
    """Wait for a pipeline of several jobs to end (after its first job's log); exit 0 only when it succeeded."""
    while not (found := await client.pipeline(pipeline_id)).terminal:
        await asyncio.sleep(poll)
    print(f"pipeline {pipeline_id}: {found.state} ({len(found.job_ids)} jobs)"
          + (f": {found.error}" if found.error else ""), file=out)
    return EXIT_OK if found.state == "success" else EXIT_FAILED


async def jobs(client: Client, status: str | None, repo: str | None, limit: int, as_json: bool) -> int:
    found = (await client.list_jobs(status=status, repo=repo, limit=limit)).jobs
    if as_json:
        print(json.dumps([job.raw for job in found], indent=2))
        return EXIT_OK
    if not found:
        print("no jobs", file=sys.stderr)
        return EXIT_OK
    rows = [["ID", "STATE", "PRIO", "REPO", "REF", "QUEUED", "DURATION"]]
    for job in found:
        rows.append([str(job.id), job.state, str(job.priority), job.repo, job.ref, _ago(job.queued_at),
                     _duration(job.duration)])
    _table(rows, sys.stdout)
    return EXIT_OK


def describe(job: JobInfo) -> str:
    """A job as `forgeci status` prints it."""
    cache = {None: "no restore", True: "hit", False: "miss"}[job.cache_hit]
    stopping = job.cancel_requested and job.state == "running"
    lines = [f"job {job.id}: {job.state}" + (" (cancel requested)" if stopping else ""),
             f"  repo      {job.repo}",
             f"  ref       {job.ref}" + (f" @ {job.sha}" if job.sha else ""),
             f"  priority  {job.priority}    attempts {job.attempts}    cache {cache}",
             f"  queued    {_ago(job.queued_at)}    duration {_duration(job.duration)}"]
    if job.error:
        lines.append(f"  error     {job.error}")
    if job.snapshot:
        lines.append(f"  snapshot  {job.snapshot.get('key')}")
    if job.steps:
        lines.append("  steps:")
        for step in job.steps:
            code = "" if step.exit_code is None else f" (exit {step.exit_code})"
            lines.append(f"    {step.index + 1}. {step.name:<20} {step.state:<10} {_duration(step.duration)}{code}")
    return "\n".join(lines)


async def status(client: Client, job_id: int, as_json: bool) -> int:
    job = await client.job(job_id)
    print(json.dumps(job.raw, indent=2) if as_json else describe(job))
    return EXIT_OK


async def cancel(client: Client, job_id: int) -> int:
    if await client.cancel(job_id) == "cancelled":
        print(f"job {job_id} cancelled")
    else:
        print(f"job {job_id}: cancel requested; its runner is stopping it")
    return EXIT_OK


async def retry(client: Client, job_id: int, from_failed_step: bool) -> int:
    new_id = await client.retry(job_id, from_failed_step=from_failed_step)
    print(f"job {new_id} queued (retry of job {job_id}): {client.server}/dashboard/jobs/{new_id}")
    return EXIT_OK
