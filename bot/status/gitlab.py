"""GitLab commit statuses: `POST /projects/:id/statuses/:sha`, with GitLab's own state names."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from bot.status.base import CommitStatus, InstancePoster
from runner.models import JobSpec, JobState

STATE: dict[JobState, str] = {
    JobState.queued: "pending", JobState.running: "running",
    JobState.success: "success", JobState.skipped: "success",
    JobState.failure: "failed", JobState.timeout: "failed",
    JobState.cancelled: "canceled", JobState.error: "failed",  # GitLab has no "error"
}


class GitLabStatuses(InstancePoster):
    """Posts with a private token; GitLab refuses a status in the state it already has, so those are skipped."""

    forge = "gitlab"

    def __init__(self, client: httpx.AsyncClient, api_url: str, token: str,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(client, api_url, token, clock)
        self._last: dict[tuple[str, str, str], str] = {}  # (project, sha, context) -> the state GitLab has

    def where(self, spec: JobSpec) -> str | None:
        project = spec.meta.get("project_id", "")
        return project if project.isdigit() else None

    def auth(self) -> dict[str, str]:
        return {"PRIVATE-TOKEN": self._token}

    async def post(self, spec: JobSpec, status: CommitStatus) -> None:
        project, sha = spec.meta["project_id"], spec.sha or ""
        state = STATE[status.job_state]
        key = (project, sha, status.context)
        if self._last.get(key) == state:
            return  # "Cannot transition status via :run from :running": only a new state is news to GitLab
        body: dict[str, object] = {"state": state, "name": status.context, "target_url": status.target_url,
                                   "description": status.description}
        await self.send(spec, f"/projects/{project}/statuses/{sha}", body)
        self._last[key] = state
        if status.job_state.is_terminal:
            self._last.pop(key, None)  # a retried job starts over from pending
