"""The agent API (/agent/v1/): remote runners claim jobs under leases and report through the same job control.

Every call carries the agent's token (`forgeci agents token create NAME`) as a Bearer token; every call after the
claim carries the lease, and one that is no longer the job's (expired and requeued, or handed to a newer attempt)
is refused with 409, so an agent back from a partition cannot overwrite a newer attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets as random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from bot.agent_logs import AgentLogs, parse_line
from bot.agent_transport import Network, Transport, parse_proxies
from bot.errors import HTTPError
from bot.keys import ENVIRON, RUNTIME, SETTINGS
from bot.parse import MAX_ID, check_keys, read_json
from config.errors import ConfigError
from config.labels import parse_labels
from config.services import SERVICE_NAME, SERVICE_NAME_RULE
from runner.agent.wire import (
    API,
    ARG_DECODERS,
    INDEX_OPS,
    MAX_BATCH,
    MAX_WAIT,
    job_to_dict,
    outcome_from_dict,
    step_from_dict,
)
from runner.environment import Secrets
from runner.errors import InvalidTransition
from runner.events import JobEvent
from runner.models import Job, JobState
from runner.queue.agents import AGENT_PREFIX, check_name, lease_runner_id
from runner.repos import parse_repo
from runner.runtime import Runtime

log = logging.getLogger(__name__)
POLL = 1.0  # a waiting claim looks at the queue at least this often (other processes write it too)


@dataclass
class AgentState:
    """What the agent API keeps for the app: the log appender, the server's secrets, the trusted proxies."""

    logs: AgentLogs
    secrets: Secrets
    proxies: tuple[Network, ...]
    lease_seconds: float
    wake: asyncio.Event
    service_logs: dict[int, dict[str, AgentLogs]] = field(default_factory=dict)  # by job, by service


AGENTS = web.AppKey("agents", AgentState)


def _runtime(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


async def agent_name(request: web.Request) -> str:
    """The token's agent: 401 without a valid token, 403 (and its jobs requeued) for a revoked one."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPError(401, "unauthorized", "send the agent token as `Authorization: Bearer TOKEN`")
    queue = _runtime(request).queue
    found = await asyncio.to_thread(queue.agent_token, token.strip())
    if found is None:
        raise HTTPError(401, "unauthorized", "unknown agent token")
    name, revoked = found
    if revoked:
        await requeue_agent(_runtime(request), f"{AGENT_PREFIX}{name}:", "the agent's token was revoked")
        raise HTTPError(403, "token revoked", f"the token of agent {name} was revoked")
    return name


async def requeue_agent(runtime: Runtime, prefix: str, reason: str, keep: frozenset[str] = frozenset()) -> list[int]:
    return await runtime.control.requeue_orphans(
        lambda runner_id: runner_id.startswith(prefix) and runner_id not in keep, reason)


def transport_of(request: web.Request) -> Transport:
    """The request's peer address (None on a Unix socket), whether it is TLS, and X-Forwarded-Proto."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    address = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else None
    tls = transport is not None and transport.get_extra_info("sslcontext") is not None
    return Transport(address, tls, request.headers.get("X-Forwarded-Proto"))


def _job_secrets(state: AgentState, job: Job) -> dict[str, str]:
    """The values of the secrets `job` may receive (its pipeline's, for its repository, never for a fork)."""
    spec = job.spec
    if spec.fork:
        return {}
    names = spec.pipeline.get("secrets", ()) if isinstance(spec.pipeline, dict) else tuple(state.secrets.values)
    slug = parse_repo(spec.repo).slug
    return {name: state.secrets.values[name] for name in names
            if name in state.secrets.values and state.secrets.specs[name].allows(slug)}


async def claim(request: web.Request) -> web.Response:
    """Long poll (up to 30 s) for a job; 200 with its lease and all it needs, or 204."""
    name = await agent_name(request)
    body = await read_json(request, optional=True)
    check_keys(body, (), ("label", "wait", "fresh", "running", "labels", "version", "max_concurrent"))
    label = check_name(str(body.get("label") or "agent"), "agent label")
    labels = await _register(request, name, label, body)
    wait = body.get("wait", MAX_WAIT)
    if not isinstance(wait, (int, float)) or isinstance(wait, bool) or not math.isfinite(wait) or wait < 0:
        raise HTTPError(400, "bad wait", "wait: seconds, a number >= 0")
    running = body.get("running") or []
    if not isinstance(running, list) or not all(isinstance(r, str) for r in running):
        raise HTTPError(400, "bad running", "running: the lease ids the agent still runs")
    runtime, state = _runtime(request), request.app[AGENTS]
    if body.get("fresh"):  # the agent (re)started: what it held before is not running any more
        keep = frozenset(running)
        await requeue_agent(runtime, f"{AGENT_PREFIX}{name}:{label}:", "the agent restarted", keep)
    deadline = time.monotonic() + min(float(wait), MAX_WAIT)
    while request.transport is not None and not request.transport.is_closing():  # the agent still waits
        runner_id = lease_runner_id(name, label, random.token_hex(8))
        job = await runtime.control.claim(runner_id, state.lease_seconds, labels)
        if job is not None:
            await runtime.control.begin_attempt(job.id)
            return web.json_response(_handout(request, state, job, runner_id))
        left = deadline - time.monotonic()
        if left <= 0:
            return web.Response(status=204)
        state.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.wake.wait(), min(POLL, left))
    return web.Response(status=204)  # nobody to answer


async def _register(request: web.Request, name: str, label: str, body: dict[str, Any]) -> tuple[str, ...]:
    """The claim's labels, checked; the agent's entry in the registry (GET /agents) brought up to date."""
    raw = body.get("labels") or []
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise HTTPError(400, "bad labels", "labels: an array of runner labels")
    try:
        labels = parse_labels(raw, "labels")
    except ConfigError as exc:
        raise HTTPError(400, "bad labels", str(exc)) from None
    version = body.get("version")
    if version is not None and (not isinstance(version, str) or len(version) > 64):
        raise HTTPError(400, "bad version", "version: a string of at most 64 characters")
    slots = body.get("max_concurrent")
    if slots is not None and (not isinstance(slots, int) or isinstance(slots, bool) or not 1 <= slots <= 1024):
        raise HTTPError(400, "bad max_concurrent", "max_concurrent: an integer 1..1024")
    await asyncio.to_thread(_runtime(request).queue.agent_seen, name, label, labels=labels, version=version,
                            address=transport_of(request).peer, max_concurrent=slots)
    return labels


def _handout(request: web.Request, state: AgentState, job: Job, runner_id: str) -> dict[str, Any]:
    values = _job_secrets(state, job)
    transport = transport_of(request)
    if values and not transport.secure(state.proxies):
        state.logs.system(job.id, f"secrets withheld ({', '.join(sorted(values))}): {transport.why_not()}")
        values = {}
    state.logs.begin(job.id)
    specs = {n: {"env": s.env, "repos": list(s.repos)} for n, s in state.secrets.specs.items()}
    return {"lease": {"id": runner_id, "attempt": job.attempts, "expires": job.lease_expires,
                      "seconds": state.lease_seconds},
            "job": job_to_dict(job), "secrets": {"specs": specs, "values": values},
            "log_base": state.logs.last(job.id)}


def _job_id(request: web.Request) -> int:
    text = request.match_info["job"]
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_ID:
        raise HTTPError(404, "no such job", f"job {text!r}")
    return int(text)


async def _leased(request: web.Request, body: dict[str, Any]) -> tuple[Job, str]:
    """The job of the URL, still running under the body's lease; 404, or 409 when the lease is not its own."""
    lease = body.get("lease")
    if not isinstance(lease, str) or not lease.startswith(AGENT_PREFIX):
        raise HTTPError(400, "bad lease", "lease: the id the claim answered")
    job_id = _job_id(request)
    job = await asyncio.to_thread(_runtime(request).queue.get, job_id)
    if job.runner_id != lease or job.state is not JobState.running:
        raise HTTPError(409, "lease lost", f"job {job_id} is no longer this lease's (it is {job.state}): stop it")
    return job, lease


async def heartbeat(request: web.Request) -> web.Response:
    await agent_name(request)
    body = await read_json(request)
    check_keys(body, ("lease",))
    job, lease = await _leased(request, body)
    runtime, state = _runtime(request), request.app[AGENTS]
    if not await runtime.control.heartbeat(job.id, lease, state.lease_seconds):
        raise HTTPError(409, "lease lost", f"job {job.id} is no longer this lease's")
    return web.json_response({"cancel": await runtime.control.cancel_requested(job.id),
                              "expires": time.time() + state.lease_seconds})


async def log_lines(request: web.Request) -> web.Response:
    """A batch of numbered lines; what the log has already is skipped, so a resend is harmless."""
    await agent_name(request)
    body = await read_json(request)
    check_keys(body, ("lease", "lines"))
    job, _ = await _leased(request, body)
    lines = body["lines"]
    if not isinstance(lines, list) or len(lines) > MAX_BATCH:
        raise HTTPError(400, "bad lines", f"lines: a list of at most {MAX_BATCH}")
    last = request.app[AGENTS].logs.append(job.id, [parse_line(line) for line in lines])
    return web.json_response({"last": last})


async def service_log(request: web.Request) -> web.Response:
    """A batch of a service's kept log (numbered as the coordinator's file continues: an empty batch answers its
    last number); idempotent like the job's log."""
    await agent_name(request)
    body = await read_json(request)
    check_keys(body, ("lease", "name", "lines"))
    job, _ = await _leased(request, body)
    name, lines = body["name"], body["lines"]
    if not isinstance(name, str) or not SERVICE_NAME.fullmatch(name):
        raise HTTPError(400, "bad service name", SERVICE_NAME_RULE)
    if not isinstance(lines, list) or len(lines) > MAX_BATCH:
        raise HTTPError(400, "bad lines", f"lines: a list of at most {MAX_BATCH}")
    state = request.app[AGENTS]
    logs = state.service_logs.get(job.id, {}).get(name)
    if logs is None:
        path = _runtime(request).layout.service_log_file(job.id, name)
        logs = AgentLogs(None, lambda _: path, state.logs.masker)
        state.service_logs.setdefault(job.id, {})[name] = logs
    return web.json_response({"last": logs.append(job.id, [parse_line(line) for line in lines])})


async def step(request: web.Request) -> web.Response:
    """A step started or finished, or the commit the job checked out (idempotent: each sets a row)."""
    await agent_name(request)
    body = await read_json(request)
    check_keys(body, ("lease", "event"), ("index", "name", "total", "result", "sha"))
    job, _ = await _leased(request, body)
    control = _runtime(request).control
    try:
        if body["event"] == "started":
            control.step_started(job, int(body["index"]), str(body["name"]), int(body["total"]))
        elif body["event"] == "finished":
            try:
                control.step_finished(job, step_from_dict(body["result"]), int(body["total"]))
            except InvalidTransition:  # a resend: the step is recorded as finished already
                pass
        elif body["event"] == "sha":
            control.checked_out(job, str(body["sha"]))
        else:
            raise HTTPError(400, "bad event", "event: started, finished or sha")
    except (KeyError, TypeError, ValueError) as exc:
        raise HTTPError(400, "bad step event", str(exc)) from None
    return web.json_response({"ok": True})


async def result(request: web.Request) -> web.Response:
    """How the attempt ended; a resend of a recorded result answers what was recorded."""
    await agent_name(request)
    body = await read_json(request)
    check_keys(body, ("lease", "outcome"), ("requeue",))
    runtime = _runtime(request)
    job_id = _job_id(request)
    job = await asyncio.to_thread(runtime.queue.get, job_id)
    if job.runner_id == body["lease"] and job.state.is_terminal:
        return web.json_response({"state": str(job.state)})
    job, lease = await _leased(request, body)
    try:
        outcome = outcome_from_dict(body["outcome"])
    except (KeyError, TypeError, ValueError) as exc:
        raise HTTPError(400, "bad outcome", str(exc)) from None
    requeue = body.get("requeue")
    state = await runtime.control.record(job, outcome, lease, requeue=str(requeue) if requeue else None)
    if state is None:
        raise HTTPError(409, "lease lost", f"job {job.id}: the result was not recorded (another lease holds it)")
    request.app[AGENTS].logs.finish(job.id)
    request.app[AGENTS].service_logs.pop(job.id, None)
    return web.json_response({"state": str(state)})


async def index(request: web.Request) -> web.Response:
    """The coordinator's cache, snapshot and artifact indexes, for the agent's store work."""
    name = await agent_name(request)
    body = await read_json(request)
    check_keys(body, ("op", "args"))
    op = INDEX_OPS.get(str(body["op"]))
    if op is None or not isinstance(body["args"], dict):
        raise HTTPError(400, "bad index call", f"op: one of {', '.join(sorted(INDEX_OPS))}; args: an object")
    names, encode, _ = op
    args = body["args"]
    try:
        values = {n: ARG_DECODERS[n](args[n]) if n in ARG_DECODERS and args[n] is not None else args[n]
                  for n in names}
    except (KeyError, TypeError, ValueError) as exc:
        raise HTTPError(400, "bad index arguments", str(exc)) from None
    if str(body["op"]) in JOB_WRITES:
        await _own_job(request, name, values)
    method = getattr(_runtime(request).queue, str(body["op"]))
    value = await asyncio.to_thread(method, **values)
    return web.json_response({"result": encode(value)})


# Index writes about one job: only for a job the calling agent runs now.
JOB_WRITES = frozenset({"set_cache_hit", "record_cache_restores", "record_cache_save", "put_snapshot",
                        "delete_snapshot", "put_artifact", "forget_job_artifacts"})


async def _own_job(request: web.Request, name: str, values: dict[str, Any]) -> None:
    record = values.get("record")
    job_id = values.get("job_id") if record is None else getattr(record, "job_id", None)
    if not isinstance(job_id, int):
        raise HTTPError(400, "bad index arguments", "a job id")
    job = await asyncio.to_thread(_runtime(request).queue.get, job_id)
    if job.state is not JobState.running or not (job.runner_id or "").startswith(f"{AGENT_PREFIX}{name}:"):
        raise HTTPError(409, "lease lost", f"job {job_id} is not running on agent {name}")


ROUTES = (
    ("POST", f"{API}/claim", claim),
    ("POST", f"{API}/jobs/{{job}}/heartbeat", heartbeat),
    ("POST", f"{API}/jobs/{{job}}/log", log_lines),
    ("POST", f"{API}/jobs/{{job}}/step", step),
    ("POST", f"{API}/jobs/{{job}}/service-log", service_log),
    ("POST", f"{API}/jobs/{{job}}/result", result),
    ("POST", f"{API}/index", index),
)


def setup_agent_api(app: web.Application) -> None:
    """The routes, and (once the runtime is up) the state they share and the wake-ups of waiting claims."""
    proxies = parse_proxies(app[SETTINGS].server.trusted_proxies)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)

    async def agents_ctx(app: web.Application) -> AsyncIterator[None]:
        runtime = app[RUNTIME]
        wake = asyncio.Event()
        secrets = Secrets.resolve(app[SETTINGS], app[ENVIRON])
        app[AGENTS] = AgentState(AgentLogs(runtime.hub, runtime.layout.log_file, secrets.masker()), secrets, proxies,
                                 float(app[SETTINGS].queue.lease_seconds), wake)

        logs = app[AGENTS].logs
        runtime.wake_hooks.append(wake.set)  # PostgreSQL: work another process committed (runner.backend)

        async def follow() -> None:
            async for event in runtime.events.subscribe(only=JobEvent):  # pipeline events would wake it for nothing
                if not isinstance(event, JobEvent):
                    continue
                if event.state == "queued":  # enqueued, requeued, or its needs are done ("ready")
                    wake.set()
                if event.kind == "state" and event.state != "running":  # no agent writes its log now
                    logs.finish(event.job_id, only_begun=True)

        task = asyncio.create_task(follow(), name="forgeci-agent-wake")
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    app.cleanup_ctx.append(agents_ctx)
