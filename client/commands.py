"""The CLI's client commands (submit, jobs, status, logs, cancel, retry): calls through client.api, human output."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TextIO

from client.api import Client
from client.errors import APIError, AuthFailed, ClientError, ServerUnreachable
from client.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from client.models import JobInfo, LogEnd
from client.output import ago as _ago
from client.output import duration as _duration
from client.output import table as _table
from client.pipeline_commands import follow_pipeline
from config.errors import ConfigError

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


async def follow(client: Client, job_id: int, *, follow: bool, out: TextIO | None = None,
                 err: TextIO | None = None, service: str | None = None) -> int:
    """Print the job's log (or with `service`, that service's kept log); with `follow`, until the job ends.
    Exit 0 for success, 1 for another end, 2 for a service the job kept no log of (naming those it kept)."""
    out, err = out or sys.stdout, err or sys.stderr
    end: LogEnd | None = None
    try:
        async for item in client.read_log(job_id, follow=follow, service=service):
            if isinstance(item, LogEnd):
                end = item
                break
            out.write(item.text + "\n")
            out.flush()
    except APIError as exc:
        if service is None or exc.status != 404 or not isinstance(exc.detail, dict) or "services" not in exc.detail:
            raise
        kept = ", ".join(str(name) for name in exc.detail["services"]) or "none"
        print(f"forgeci: job {job_id} kept no log of service {service!r} (its service logs: {kept})", file=err)
        return EXIT_USAGE
    if not follow:
        return EXIT_OK
    state = end.state if end else None
    job = await client.job(job_id)
    print(f"job {job_id}: {state} ({_duration(job.duration)})" + (f": {job.error}" if job.error else ""), file=err)
    return EXIT_OK if state == "success" else EXIT_FAILED


def parse_inputs(pairs: list[str]) -> dict[str, str]:
    """`--input KEY=VALUE` options as the API's `inputs`; ConfigError (exit 2) for one without `=`."""
    found: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"expects KEY=VALUE, got {pair!r}", source="--input")
        found[key] = value
    return found


async def submit(client: Client, repo: str, ref: str, sha: str | None, priority: int | None,
                 follow_log: bool, inputs: dict[str, str] | None = None) -> int:
    """Submit a pipeline and say what it became; with `follow_log`, follow the whole pipeline (waiting while it is
    planned): every job's log as it runs, then how each job and the pipeline ended; exit 0 only if it succeeded."""
    info = sys.stderr if follow_log else sys.stdout  # --follow: stdout is the log alone
    submitted = await client.submit(repo, ref, sha=sha, priority=priority, inputs=inputs or None)
    if submitted.job is None:
        assert submitted.pipeline is not None  # Submission.from_dict refuses an answer with neither
        why = (await client.pipeline(submitted.pipeline)).error
        print(f"pipeline {submitted.pipeline} is still planning" + (f" ({why})" if why else "")
              + ": the server keeps trying to fetch its repository", file=info)
    else:
        print(queued_line(client, submitted.pipeline, submitted.jobs), file=info)
    if not follow_log:
        return EXIT_OK
    if submitted.pipeline is None:  # a server from before pipelines: its one job
        assert submitted.job is not None
        return await follow(client, submitted.job, follow=True)
    return await follow_pipeline(client, submitted.pipeline, out=sys.stdout, err=info,
                                 announce=queued_line if submitted.job is None else None)


def queued_line(client: Client, pipeline_id: int | None, jobs: tuple[int, ...]) -> str:
    """What a submit made: its one job, or its pipeline of several (the dashboard's page of either)."""
    if len(jobs) == 1 or pipeline_id is None:
        return f"job {jobs[0]} queued: {client.server}/dashboard/jobs/{jobs[0]}"
    return (f"pipeline {pipeline_id} queued with {len(jobs)} jobs ({', '.join(map(str, jobs))}): "
            f"{client.server}/dashboard/pipelines/{pipeline_id}")


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
    cache = job.cache_text
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
