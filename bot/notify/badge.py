"""GET /badge/{owner}/{repo}.svg?branch=main: an SVG badge of the newest pipeline's state on a branch.

Readable without a token unless `server.protect_reads` (the API's read access). Sent with an ETag and
`Cache-Control: no-cache`, so a README's image proxy (GitHub's camo) revalidates instead of keeping an old state.
"""

from __future__ import annotations

import asyncio
import hashlib
from html import escape

from aiohttp import web

from bot.errors import HTTPError
from bot.keys import RUNTIME
from runner.queue import Queue
from runner.repos import parse_repo

LABEL = "forgeci"
# state -> (text, colour): the shields.io palette, so the badge sits well beside others.
STATES = {
    "success": ("passing", "#4c1"), "failure": ("failing", "#e05d44"), "error": ("error", "#fe7d37"),
    "cancelled": ("cancelled", "#9f9f9f"), "skipped": ("skipped", "#9f9f9f"),
    "running": ("running", "#dfb317"), "queued": ("queued", "#dfb317"),
    "planning": ("queued", "#dfb317"),
}
NONE = ("no pipelines", "#9f9f9f")
CHAR_WIDTH = 6.5  # Verdana 11px, roughly: enough to size the badge's halves
CACHE_CONTROL = "no-cache, max-age=0, must-revalidate"


def badge_svg(text: str, colour: str, label: str = LABEL) -> str:
    """A flat badge `label | text`, the right half in `colour`."""
    left, right = int(len(label) * CHAR_WIDTH + 10), int(len(text) * CHAR_WIDTH + 10)
    width = left + right
    label, text = escape(label), escape(text)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img" '
        f'aria-label="{label}: {text}"><title>{label}: {text}</title>'
        f'<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/>'
        f'<stop offset="1" stop-opacity=".1"/></linearGradient>'
        f'<clipPath id="r"><rect width="{width}" height="20" rx="3" fill="#fff"/></clipPath>'
        f'<g clip-path="url(#r)"><rect width="{left}" height="20" fill="#555"/>'
        f'<rect x="{left}" width="{right}" height="20" fill="{colour}"/>'
        f'<rect width="{width}" height="20" fill="url(#s)"/></g>'
        f'<g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" font-size="11">'
        f'<text x="{left / 2}" y="14">{label}</text><text x="{left + right / 2}" y="14">{text}</text></g></svg>'
    )


def latest_state(queue: Queue, slug: str, branch: str | None) -> str | None:
    """The newest pipeline's state of repository `slug` (owner/name, any case) on `branch` (None: any); "" when
    the repository has pipelines but not on that branch; None when it has none at all."""
    wanted = slug.casefold()
    repos = []
    for repo in queue.pipeline_repos():
        try:
            if parse_repo(repo).slug.casefold() == wanted:
                repos.append(repo)
        except ValueError:
            continue
    if not repos:
        return None
    refs = None if branch is None else [branch, f"refs/heads/{branch}"]
    rows = queue.branch_pipelines(repos, refs)
    return rows[0][1] if rows else ""


async def badge(request: web.Request) -> web.Response:
    """GET /badge/{owner}/{name}.svg?branch=: the badge; 404 (JSON) for a repository with no pipelines."""
    owner, name = request.match_info["owner"], request.match_info["name"]
    branch = request.query.get("branch") or None
    state = await asyncio.to_thread(latest_state, request.app[RUNTIME].queue, f"{owner}/{name}", branch)
    if state is None:
        raise HTTPError(404, "not found", f"no pipelines of repository {owner}/{name}")
    text, colour = STATES.get(state, NONE) if state else NONE
    body = badge_svg(text, colour).encode()
    etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
    headers = {"Cache-Control": CACHE_CONTROL, "ETag": etag, "X-Content-Type-Options": "nosniff",
               "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"}
    if etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type="image/svg+xml", charset="utf-8", headers=headers)
