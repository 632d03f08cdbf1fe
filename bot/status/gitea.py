"""Gitea and Forgejo commit statuses: the GitHub-shaped `POST /repos/{owner}/{repo}/statuses/{sha}`."""

from __future__ import annotations

from urllib.parse import quote

from bot.status.base import CommitStatus, InstancePoster
from runner.models import JobSpec


class GiteaStatuses(InstancePoster):
    """Posts with a token to the configured API root, or to the one the delivery's repository page is on."""

    forge = "gitea"

    def where(self, spec: JobSpec) -> str | None:
        repository = spec.meta.get("repository", "")
        return repository if repository.count("/") == 1 else None

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self._token}"}

    async def post(self, spec: JobSpec, status: CommitStatus) -> None:
        owner, repo = spec.meta["repository"].split("/")
        body: dict[str, object] = {"state": status.state, "target_url": status.target_url,
                                   "description": status.description, "context": status.context}
        await self.send(spec, f"/repos/{quote(owner, safe='')}/{quote(repo, safe='')}/statuses/{spec.sha}", body)
