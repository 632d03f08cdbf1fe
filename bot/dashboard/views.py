"""Dashboard pages: server-rendered HTML (Jinja2) for the overview and job pages, sign-in, and the form actions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web
from markupsafe import Markup

from bot.artifacts import job_artifacts
from bot.auth import CSRF_FIELD, Session
from bot.dashboard import ansi, chart, dag
from bot.keys import AUTH, METRICS, RUNTIME
from bot.metrics import RANGES, Metrics, parse_range
from config.durations import format_duration
from config.errors import ConfigError
from runner.errors import InvalidTransition, JobNotFound, QuotaExceeded
from runner.logs import LogLine, read_log
from runner.services import service_log, service_log_names
from runner.models import Job
from runner.runtime import Runtime

HERE = Path(__file__).parent
MAX_LOG_LINES = 5000  # the job page renders the log's tail; the whole log is one link away as text
ACTIVE_LIMIT = 50
RECENT_LIMIT = 15
PIPELINE_LIMIT = 15  # the overview's newest pipelines, each with its jobs
TEMPLATES = web.AppKey("dashboard_templates", jinja2.Environment)


# -- template helpers -----------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    return "–" if seconds is None else format_duration(max(0.0, seconds))


def _ago(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return "–"
    delta = max(0.0, (now or time.time()) - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{int(delta // size)}{unit} ago"
    return f"{int(delta)}s ago"


def _clock(ts: float | None) -> str:
    return "–" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%" if value < 1 else "100%"


def _filesize(size: int | None) -> str:
    if size is None:
        return "–"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _repo_name(repo: str) -> str:
    """The last two parts of a URL or path: enough to recognise a repository in a table."""
    parts = [p for p in repo.rstrip("/").removesuffix(".git").replace(":", "/").split("/") if p]
    return "/".join(parts[-2:]) or repo


def make_templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=jinja2.select_autoescape(default=True), trim_blocks=True,
                             lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters.update(duration=_duration, ago=_ago, clock=_clock, percent=_percent, repo_name=_repo_name,
                       filesize=_filesize, member=dag.member_of, job_key=dag.job_key)
    return env


# -- access ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Viewer:
    """Who is looking: whether they may act, and the CSRF token their forms carry."""

    session: Session | None
    new_cookie: str | None  # a session to set on the response (first visit)
    may_act: bool
    signed_in: bool
    token_required: bool
    csrf: str


def viewer(request: web.Request) -> Viewer:
    """The visitor's session (issuing one on the first visit); raises a redirect to sign in when reads are protected."""
    auth = request.app[AUTH]
    if not auth.may_read(request):
        raise web.HTTPSeeOther(f"/dashboard/login?{urlencode({'next': request.path_qs})}")
    session = auth.session(request)
    cookie = None
    if session is None:
        cookie = auth.new_session(authenticated=False)
        session = auth.read_session(cookie)
    assert session is not None
    signed_in = session.authenticated
    return Viewer(session, cookie, auth.token is None or signed_in, signed_in, auth.token is not None,
                  auth.csrf_token(session))


def page(request: web.Request, template: str, who: Viewer, status: int = 200, **context: Any) -> web.Response:
    html = request.app[TEMPLATES].get_template(template).render(viewer=who, request_path=request.path_qs,
                                                                 **context)
    response = web.Response(text=html, content_type="text/html", status=status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; style-src-attr 'unsafe-inline'; "
        "script-src 'self'; frame-ancestors 'none'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    if who.new_cookie is not None:
        request.app[AUTH].set_cookie(response, who.new_cookie)
    return response


def redirect(location: str, status: int = 303) -> web.Response:
    """303 after a form post (the browser then GETs the page), 302 for a plain moved page."""
    return web.Response(status=status, headers={"Location": location})


def _runtime(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


# -- overview -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Overview:
    metrics: Metrics
    running: list[Job]
    queued: list[Job]
    recent: list[Job]
    pipelines: list[dag.PipelineRow]
    reasons: dict[int, str]  # why each job of the queued list waits (queue.wait_reasons: the API's, the TUI's words)


async def _overview(request: web.Request, range_name: str) -> Overview:
    queue = _runtime(request).queue
    metrics = await request.app[METRICS].get(queue, range_name)

    def lists() -> tuple[list[Job], list[Job], list[Job], list[dag.PipelineRow], dict[int, str]]:
        queued, _ = queue.list_jobs(order="dispatch", limit=ACTIVE_LIMIT)
        recent, _ = queue.list_jobs(limit=RECENT_LIMIT + ACTIVE_LIMIT)
        records, _ = queue.list_pipelines(limit=PIPELINE_LIMIT)
        now = time.time()
        # One small indexed read per listed pipeline (jobs_pipeline): ~4 ms for 15 of 5 jobs among 10,000.
        pipelines = [dag.pipeline_row(record, queue.jobs_of_pipeline(record.id) if record.job_ids else [], now)
                     for record in records]
        return (queue.running_jobs(), queued, [job for job in recent if job.state.is_terminal][:RECENT_LIMIT],
                pipelines, queue.wait_reasons([job.id for job in queued]))

    return Overview(metrics, *await asyncio.to_thread(lists))


def _range(request: web.Request) -> str:
    try:
        return parse_range(request.query.get("range"))
    except ConfigError:
        raise web.HTTPSeeOther("/dashboard") from None


async def schedule_views(request: web.Request) -> list[dict[str, Any]]:
    from bot.dashboard.schedules import schedule_views as views  # it builds on this module's helpers

    return await views(request)


async def agent_views(request: web.Request) -> dict[str, Any] | None:
    from bot.dashboard.agents import agent_views as views  # the Agents card (GET /agents's document)

    return await views(request)


async def overview(request: web.Request) -> web.Response:
    who = viewer(request)
    range_name = _range(request)
    data = await _overview(request, range_name)
    return page(request, "overview.html", who, range=range_name, ranges=list(RANGES), data=data,
                chart=Markup(chart.render(data.metrics.stats, range_name)), schedules=await schedule_views(request),
                agents=await agent_views(request))


async def overview_fragment(request: web.Request) -> web.Response:
    who = viewer(request)
    range_name = _range(request)
    data = await _overview(request, range_name)
    return page(request, "_overview_live.html", who, range=range_name, data=data,
                chart=Markup(chart.render(data.metrics.stats, range_name)), schedules=await schedule_views(request),
                agents=await agent_views(request))


# -- job page -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogView:
    lines: list[tuple[int, str, str, Markup]]  # (n, step, stream, html)
    skipped: int  # earlier lines left out of the page
    last: int  # the last line's number: the live stream resumes after it


def _log_view(path: Path, source: Iterable[LogLine] | None = None) -> LogView:
    """The page's view of a log: its file, or `source` (the hub's lines: a cluster's database)."""
    lines: list[tuple[int, str, str, Markup]] = []
    total = 0
    tail: list[Any] = []
    for line in read_log(path) if source is None else source:
        total += 1
        tail.append(line)
        if len(tail) > MAX_LOG_LINES:
            del tail[: len(tail) - MAX_LOG_LINES]
    for line in tail:
        html, _ = ansi.to_html(line.text)
        lines.append((line.n, line.step, line.stream, Markup(html)))
    return LogView(lines, total - len(tail), tail[-1].n if tail else 0)


def path_id(request: web.Request) -> int:
    """The job or pipeline id of a dashboard path (`/dashboard/jobs/{id}`, `/dashboard/pipelines/{id}`)."""
    text = request.match_info["id"]
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 2**63 - 1:
        raise web.HTTPNotFound()  # the router's own answer for a path that cannot name a job or pipeline
    return int(text)


def _job_context(runtime: Runtime, job_id: int) -> dict[str, Any]:
    job = runtime.queue.get(job_id)
    now = time.time()
    longest = max((s.duration if s.duration is not None else now - (s.started_at or now) for s in job.steps),
                  default=0.0)
    return {"job": job, "longest": longest or 1.0, "now": now, "snapshot": runtime.queue.snapshot(job_id),
            "caches": runtime.queue.cache_results(job_id), "attempts_on": runtime.queue.attempt_runners(job_id)}


async def job_page(request: web.Request) -> web.Response:
    who = viewer(request)
    runtime = _runtime(request)
    job_id = path_id(request)
    try:
        context = await asyncio.to_thread(_job_context, runtime, job_id)
    except JobNotFound:
        return _not_found(request, job_id)
    path = runtime.layout.log_file(job_id)
    shared = runtime.cluster is not None and runtime.cluster.shared  # the log is in the database, not (all) here
    log = await asyncio.to_thread(lambda: _log_view(path, runtime.hub.read(job_id, path) if shared else None))
    services = await asyncio.to_thread(_service_views, runtime, job_id)
    return page(request, "job.html", who, log=log, services=services, artifacts=await job_artifacts(request, job_id),
                **context)


def _service_views(runtime: Runtime, job_id: int) -> list[tuple[str, LogView]]:
    """The logs the job kept of its services, by name, each as the job page renders its own log."""
    views = []
    for name in service_log_names(runtime.layout, job_id):
        path = service_log(runtime.layout, job_id, name)  # checks the name: only a service's file is read
        if path is not None:
            views.append((name, _log_view(path)))
    return views


async def job_fragment(request: web.Request) -> web.Response:
    who = viewer(request)
    try:
        context = await asyncio.to_thread(_job_context, _runtime(request), path_id(request))
    except JobNotFound:
        raise web.HTTPNotFound() from None
    return page(request, "_job_summary.html", who, artifacts=await job_artifacts(request, context["job"].id),
                **context)


async def raw_log(request: web.Request) -> web.StreamResponse:
    viewer(request)
    job_id = path_id(request)
    return await _raw_text(_runtime(request).layout.log_file(job_id), f"job-{job_id}.log")


async def raw_service_log(request: web.Request) -> web.StreamResponse:
    """/dashboard/jobs/{id}/service/{name}/log.txt: a kept service log as text; 404 for a name it has none of."""
    viewer(request)
    job_id = path_id(request)
    name = request.match_info["name"]
    path = await asyncio.to_thread(service_log, _runtime(request).layout, job_id, name)
    if path is None:
        raise web.HTTPNotFound()
    return await _raw_text(path, f"job-{job_id}-{name}.log")  # a checked service name: letters, digits, dashes


async def _raw_text(path: Path, filename: str) -> web.Response:
    def text() -> str:
        return "".join(f"{ansi.strip(line.text)}\n" for line in read_log(path))

    body = await asyncio.to_thread(text)
    return web.Response(text=body, content_type="text/plain", headers={
        "Content-Disposition": f'inline; filename="{filename}"', "X-Content-Type-Options": "nosniff"})


# -- actions --------------------------------------------------------------------------------------


async def _form(request: web.Request) -> Mapping[str, str]:
    if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise web.HTTPUnsupportedMediaType()
    form = await request.post()
    return {key: value for key, value in form.items() if isinstance(value, str)}


async def checked_action(request: web.Request) -> Viewer | web.Response:
    """A form post must carry its session's CSRF token and, with a token configured, come from a signed-in user.

    Returns the viewer, or the response to send instead (an error page or a redirect to sign in).
    """
    auth = request.app[AUTH]
    form = await _form(request)
    session = auth.session(request)
    if not auth.csrf_ok(session, form.get(CSRF_FIELD, "")):
        return page(request, "error.html", viewer(request), status=403, title="Form expired",
                    message="The form expired or did not come from this dashboard: reload the page and try again.")
    if auth.token is not None and not (session and session.authenticated):
        return redirect(f"/dashboard/login?{urlencode({'next': request.path.rsplit('/', 1)[0]})}")
    return viewer(request)


def _not_found(request: web.Request, job_id: int) -> web.Response:
    return page(request, "error.html", viewer(request), status=404, title="Job not found",
                message=f"There is no job {job_id}: it never existed, or retention removed it.")


async def cancel_action(request: web.Request) -> web.Response:
    checked = await checked_action(request)
    if isinstance(checked, web.Response):
        return checked
    job_id = path_id(request)
    try:
        await _runtime(request).control.cancel(job_id)
    except JobNotFound:
        return _not_found(request, job_id)
    except InvalidTransition:
        return redirect(f"/dashboard/jobs/{job_id}")  # it finished meanwhile: the page shows how
    return redirect(f"/dashboard/jobs/{job_id}")


async def retry_action(request: web.Request) -> web.Response:
    checked = await checked_action(request)
    if isinstance(checked, web.Response):
        return checked
    job_id = path_id(request)
    from_failed = request.path.endswith("/retry-failed")
    try:
        new_id = await _runtime(request).control.retry(job_id, from_failed_step=from_failed)
    except JobNotFound:
        return _not_found(request, job_id)
    except InvalidTransition as exc:
        return page(request, "error.html", checked, status=409, title="Cannot retry", message=str(exc))
    except QuotaExceeded as exc:
        return page(request, "error.html", checked, status=429, title="Quota exceeded", message=str(exc))
    return redirect(f"/dashboard/jobs/{new_id}")


# -- sign in --------------------------------------------------------------------------------------


def _next(value: str | None) -> str:
    """Only a path of this dashboard: never an open redirect to another site."""
    if value and value.startswith("/dashboard") and "//" not in value and "\\" not in value:
        return value
    return "/dashboard"


async def login_page(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    who = Viewer(None, None, False, False, auth.token is not None, "")
    return page(request, "login.html", who, next=_next(request.query.get("next")), failed=False)


async def login(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    form = await _form(request)
    target = _next(form.get("next"))
    if auth.token is None:
        return redirect(target)
    if not auth.token_matches(form.get("token", "")):
        who = Viewer(None, None, False, False, True, "")
        return page(request, "login.html", who, status=401, next=target, failed=True)
    response = redirect(target)
    auth.set_cookie(response, auth.new_session(authenticated=True))
    return response


async def logout(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    form = await _form(request)
    if not auth.csrf_ok(auth.session(request), form.get(CSRF_FIELD, "")):
        return redirect("/dashboard")
    response = redirect("/dashboard")
    auth.clear_cookie(response)
    return response


async def root(request: web.Request) -> web.Response:
    return redirect("/dashboard", 302)


def setup_dashboard(app: web.Application) -> None:
    """Register the overview, job and sign-in pages, their fragments, actions and static files (after setup_api:
    it needs AUTH); bot.dashboard adds the pipeline pages."""
    app[TEMPLATES] = make_templates()
    r = app.router
    r.add_get("/", root)
    r.add_get("/dashboard", overview)
    r.add_get("/dashboard/fragments/overview", overview_fragment)
    r.add_get("/dashboard/jobs/{id}", job_page)
    r.add_get("/dashboard/jobs/{id}/summary", job_fragment)
    r.add_get("/dashboard/jobs/{id}/log.txt", raw_log)
    r.add_get("/dashboard/jobs/{id}/service/{name}/log.txt", raw_service_log)
    r.add_post("/dashboard/jobs/{id}/cancel", cancel_action)
    r.add_post("/dashboard/jobs/{id}/retry", retry_action)
    r.add_post("/dashboard/jobs/{id}/retry-failed", retry_action)
    r.add_get("/dashboard/login", login_page)
    r.add_post("/dashboard/login", login)
    r.add_post("/dashboard/logout", logout)
    static = r.add_static("/dashboard/static", HERE / "static", name="dashboard_static")
    app[TEMPLATES].globals["static"] = lambda name: str(static.url_for(filename=name, append_version=True))

