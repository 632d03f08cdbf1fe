"""The dashboard's submit form: a manual run of a repository's ref, with the inputs its pipeline file declares
(as its last planned pipeline read them), or plain KEY=VALUE lines when that file is not known yet."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from bot.api import spec_from_body
from bot.dashboard.views import checked_action, page, redirect, viewer
from bot.inputs_api import last_declared
from bot.keys import RUNTIME, SETTINGS
from config.errors import ConfigError
from config.inputs import InputSpec

FIELD = "input."  # a declared input's form field: input.KEY


async def _declared(request: web.Request, repo: str, ref: str) -> dict[str, InputSpec] | None:
    if not repo or not ref:
        return None
    found = await asyncio.to_thread(last_declared, request.app[RUNTIME].queue, repo, ref)
    return None if found is None else found[1]


def _plain(text: str) -> dict[str, str]:
    """KEY=VALUE lines (blank lines skipped); ConfigError naming a line without `=`."""
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.strip().partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"line {number}: expected KEY=VALUE, got {line.strip()[:60]!r}", "inputs")
        found[key.strip()] = value
    return found


def _body(form: Mapping[str, str], declared: dict[str, InputSpec] | None) -> dict[str, Any]:
    """The submit API's body from the form."""
    body: dict[str, Any] = {"repo": form.get("repo", "").strip(), "ref": form.get("ref", "").strip()}
    if form.get("sha", "").strip():
        body["sha"] = form["sha"].strip()
    if form.get("priority", "").strip():
        text = form["priority"].strip()
        body["priority"] = int(text) if text.lstrip("-").isdigit() else text
    if declared:
        given = {key: form[FIELD + key] for key in declared if form.get(FIELD + key, "") != ""}
    else:
        given = _plain(form.get("inputs", ""))
    if given:
        body["inputs"] = given
    return body


async def submit_page(request: web.Request) -> web.Response:
    """GET /dashboard/submit?repo=&ref=: the form; with a known repo and ref, a field per declared input."""
    who = viewer(request)
    repo, ref = request.query.get("repo", "").strip(), request.query.get("ref", "").strip()
    declared = await _declared(request, repo, ref)
    return page(request, "submit.html", who, form={"repo": repo, "ref": ref}, declared=declared, errors=[],
                looked=bool(repo and ref))


async def submit_action(request: web.Request) -> web.Response:
    """POST /dashboard/submit: the pipeline's page next, or the form again with the server's objections (400)."""
    checked = await checked_action(request)
    if isinstance(checked, web.Response):
        return checked
    form = {key: value for key, value in (await request.post()).items() if isinstance(value, str)}
    declared = await _declared(request, form.get("repo", "").strip(), form.get("ref", "").strip())
    if form.get("action") == "look":  # "Show its inputs": the form again, with the fields the ref declares
        return page(request, "submit.html", checked, form=form, declared=declared, errors=[], looked=True)
    try:
        spec = spec_from_body(_body(form, declared), request.app[SETTINGS].queue.default_priority)
        submitted = await request.app[RUNTIME].control.submit_pipeline(spec)
    except ConfigError as exc:
        return page(request, "submit.html", checked, status=400, form=form, declared=declared,
                    errors=[str(issue) for issue in exc.issues], looked=True)
    return redirect(f"/dashboard/pipelines/{submitted.pipeline_id}")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/dashboard/submit", submit_page)
    router.add_post("/dashboard/submit", submit_action)
