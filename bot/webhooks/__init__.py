"""Forge webhooks: one adapter module per forge turns verified deliveries into committed jobs."""

from __future__ import annotations

from aiohttp import web


def setup_webhooks(app: web.Application) -> None:
    """Register POST /webhooks/github, /webhooks/gitea and /webhooks/gitlab."""
    from bot.webhooks import gitea, github, gitlab

    app.router.add_post("/webhooks/github", github.receive)
    app.router.add_post("/webhooks/gitea", gitea.receive)
    app.router.add_post("/webhooks/gitlab", gitlab.receive)
