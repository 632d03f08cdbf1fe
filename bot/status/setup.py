"""The status reporter's lifetime in the app: posters from settings and secrets, one shared HTTP client."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import httpx
from aiohttp import web

from bot.keys import ENVIRON, RUNTIME, SETTINGS, STATUS
from bot.status.base import Poster
from bot.status.feed import DatabaseFeed
from bot.status.gitea import GiteaStatuses
from bot.status.github import AppCredentials, GitHubStatuses
from bot.status.gitlab import GitLabStatuses
from bot.status.reporter import StatusReporter
from config.errors import ConfigError
from config.settings import Settings, env_value
from runner.cluster import STATUS as STATUS_SINGLETON
from runner.cluster import singleton_service

log = logging.getLogger(__name__)

HTTP_TIMEOUT = httpx.Timeout(10.0, connect=5.0)  # a forge slower than this is retried later, not waited for


def build_posters(settings: Settings, environ: Mapping[str, str], client: httpx.AsyncClient) -> dict[str, Poster]:
    """One poster per forge that has credentials; a forge without them gets no statuses (logged once)."""
    posters: dict[str, Poster] = {}
    github = settings.github
    if github.app_id:
        if not github.private_key_path:
            raise ConfigError("github.app_id is set but github.private_key_path is empty", "forgeci.toml")
        try:
            key = Path(github.private_key_path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the GitHub App's private key: {exc.strerror or exc}",
                              github.private_key_path) from None
        posters["github"] = GitHubStatuses(client, github.api_url, app=AppCredentials(github.app_id, key))
    elif token := env_value(github.token_env, environ):
        posters["github"] = GitHubStatuses(client, github.api_url, token=token)
    for name, section, cls in (("gitea", settings.gitea, GiteaStatuses), ("gitlab", settings.gitlab, GitLabStatuses)):
        if token := env_value(section.token_env, environ):
            posters[name] = cls(client, section.api_url, token)
    off = [name for name in ("github", "gitea", "gitlab") if name not in posters]
    if off:
        log.info("commit statuses off for %s (no token configured)", ", ".join(off))
    return posters


async def status_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx entry: the reporter follows the runtime's events from startup to shutdown."""
    settings = app[SETTINGS]
    runtime = app[RUNTIME]
    cluster = runtime.cluster
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, follow_redirects=False) as client:
        # Several coordinators (PostgreSQL): the one holding the `status` singleton posts, from the database's feed
        # of state changes (bot/status/feed.py), so a context is never posted out of order by two processes.
        feed = (DatabaseFeed(runtime.queue, cluster.listener, events=runtime.events,
                             takeover=4 * settings.queue.lease_seconds)
                if cluster is not None and cluster.listener is not None else None)
        reporter = StatusReporter(
            runtime.queue, runtime.events, build_posters(settings, app[ENVIRON], client),
            context=settings.server.status_context, public_url=settings.server.public_url, feed=feed,
        )
        app[STATUS] = reporter
        # SQLite: started (subscribed to this process's events) before the workers start.
        async with singleton_service(cluster, STATUS_SINGLETON, reporter.start, reporter.stop):
            yield
