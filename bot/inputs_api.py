"""GET /inputs?repo=&ref=: the inputs the pipeline file of a repository's ref declares, as its last planned pipeline
read it, for the submit forms (dashboard, TUI); unknown when no pipeline of that ref was planned from its file."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from bot.auth import Access, Handler
from bot.keys import RUNTIME
from bot.parse import bad, check_keys
from config.errors import ConfigError
from config.inputs import InputSpec
from config.pipeline import pipeline_from_dict
from runner.queue import Queue

PAGES = 4  # pipelines of the repository looked through, 50 a page, for the last one of the ref


def _branch(ref: str) -> str:
    return ref.removeprefix("refs/heads/")


def last_declared(queue: Queue, repo: str, ref: str) -> tuple[int, dict[str, InputSpec]] | None:
    """(pipeline id, its declared inputs) of the newest pipeline of `repo` at `ref` planned from the repository's
    file; None when there is none (blocking: call it off the loop)."""
    cursor = None
    for _ in range(PAGES):
        records, cursor = queue.list_pipelines(repo=repo, limit=50, cursor=cursor)
        for record in records:
            if _branch(record.ref) != _branch(ref) or record.spec.pipeline is not None or not record.job_ids:
                continue
            planned = queue.get(record.job_ids[0]).spec.pipeline  # every job's pipeline keeps the file's inputs
            if planned is None:
                continue  # the file had errors
            try:
                return record.id, pipeline_from_dict(planned, "planned pipeline").inputs
            except ConfigError:
                continue
        if cursor is None:
            break
    return None


def inputs_json(inputs: dict[str, InputSpec]) -> dict[str, Any]:
    return {key: {"description": spec.description, "default": spec.default, "choices": list(spec.choices),
                  "required": spec.required} for key, spec in inputs.items()}


async def declared_inputs(request: web.Request) -> web.Response:
    """GET /inputs?repo=&ref= -> {known, pipeline, inputs}: `known` false (and no inputs) when no pipeline of that
    ref has been planned from the repository's file yet."""
    query = request.query
    check_keys(query, ("repo", "ref"))
    if not query["repo"] or not query["ref"]:
        raise bad("repo" if not query["repo"] else "ref", "expected a non-empty string")
    found = await asyncio.to_thread(last_declared, request.app[RUNTIME].queue, query["repo"], query["ref"])
    if found is None:
        return web.json_response({"known": False, "pipeline": None, "inputs": {}})
    return web.json_response({"known": True, "pipeline": found[0], "inputs": inputs_json(found[1])})


INPUT_ROUTES: tuple[tuple[str, str, Handler, Access], ...] = (
    ("GET", "/inputs", declared_inputs, "read"),
)
