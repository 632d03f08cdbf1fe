"""Gitea and Forgejo commit statuses: the GitHub-shaped `POST /repos/{owner}/{repo}/statuses/{sha}`."""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import quote

import httpx

from bot.status.base import CommitStatus, post_json
from runner.models import JobSpec


class GiteaStatuses:
    """Posts with a token to the configured API root, or to the one the delivery's repository page is on."""

    forge = "gitea"

    def __init__(self, client: httpx.AsyncClient, api_url: str, token: str,
                 clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self.api_url = api_url.rstrip("/")
        self._token = token
        self._clock = clock

    def target(self, spec: JobSpec) -> str | None:
        repository = spec.meta.get("repository", "")
        has_api = self.api_url or spec.meta.get("api_url")
        return repository if repository.count("/") == 1 and spec.sha and has_api else None

    async def post(self, spec: JobSpec, status: CommitStatus) -> None:
        owner, repo = spec.meta["repository"].split("/")
        base = self.api_url or spec.meta["api_url"].rstrip("/")
        url = f"{base}/repos/{quote(owner, safe='')}/{quote(repo, safe='')}/statuses/{spec.sha}"
        body: dict[str, object] = {"state": status.state, "target_url": status.target_url,
                                   "description": status.description, "context": status.context}
        await post_json(self._client, url, body, {"Authorization": f"token {self._token}"}, self._clock)
