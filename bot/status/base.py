"""What every forge's status poster shares: the status value, the poster contract, failure classification."""

from __future__ import annotations

import email.utils
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import httpx

from bot.errors import StatusError
from runner.models import JobSpec, JobState

MAX_DESCRIPTION = 140  # GitHub refuses longer descriptions; the others accept at least this much
RATE_LIMIT_FALLBACK = 60.0  # seconds to wait on a rate limit that does not say until when


@dataclass(frozen=True)
class CommitStatus:
    """One commit status to post: GitHub's vocabulary (pending, success, failure, error); posters translate."""

    job_id: int  # the job it is about; a pipeline's status: the job that failed it, else its first (0: none yet)
    job_state: JobState  # a pipeline's status: the job state its state matches (GitLab's names follow it)
    state: str
    description: str
    target_url: str
    context: str
    pipeline_id: int | None = None  # set for a pipeline's own status

    @property
    def subject(self) -> str:
        """What the status is about, for logs."""
        return f"pipeline {self.pipeline_id}" if self.pipeline_id is not None else f"job {self.job_id}"


class Poster(Protocol):
    """Posts commit statuses to one forge."""

    forge: str

    def target(self, spec: JobSpec) -> str | None:
        """Where the job's statuses go on this forge (owner/repo, project id); None when the job lacks it."""

    async def post(self, spec: JobSpec, status: CommitStatus) -> None:
        """Post `status` for the job's commit; raises StatusError."""


class InstancePoster(ABC):
    """A poster for a self-hosted forge (Gitea and Forgejo, GitLab): posts with a token to the configured API
    root or, when none is configured, to the one the delivery's repository page is on (meta `api_url`)."""

    forge: str

    def __init__(self, client: httpx.AsyncClient, api_url: str, token: str,
                 clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self.api_url = api_url.rstrip("/")
        self._token = token
        self._clock = clock

    @abstractmethod
    def where(self, spec: JobSpec) -> str | None:
        """The repository or project the job's statuses name on this forge; None when the job's meta lacks it."""

    @abstractmethod
    def auth(self) -> dict[str, str]:
        """The headers that carry the token, the forge's way."""

    def target(self, spec: JobSpec) -> str | None:
        where = self.where(spec)
        has_api = self.api_url or spec.meta.get("api_url")
        return where if where is not None and spec.sha and has_api else None

    async def send(self, spec: JobSpec, path: str, body: dict[str, object]) -> None:
        """POST `body` to `path` below the API root of the job's instance; raises StatusError."""
        base = self.api_url or spec.meta["api_url"].rstrip("/")
        await post_json(self._client, base + path, body, self.auth(), self._clock)


def retry_at(headers: Mapping[str, str], clock: Callable[[], float] = time.time) -> float | None:
    """When the forge said to come back: Retry-After (seconds or an HTTP date), else a rate-limit reset epoch."""
    after = headers.get("retry-after")
    if after:
        after = after.strip()
        if after.isdigit():
            return clock() + int(after)
        try:
            return email.utils.parsedate_to_datetime(after).timestamp()
        except (TypeError, ValueError):
            pass
    for name in ("x-ratelimit-reset", "ratelimit-reset"):  # GitHub and Gitea; GitLab
        value = headers.get(name, "").strip()
        if value.isdigit():
            return float(value)
    return None


def failure(status: int, headers: Mapping[str, str], message: str,
            clock: Callable[[], float] = time.time) -> StatusError:
    """Classify a forge's error response: rate limits and server errors are retried, the rest are not."""
    text = f"HTTP {status}: {message[:200]}" if message else f"HTTP {status}"
    rate_limited = status == 429 or status == 403 and (
        headers.get("x-ratelimit-remaining", "").strip() == "0" or "retry-after" in headers
        or "rate limit" in message.lower())
    if rate_limited:
        return StatusError(f"rate limited: {text}", retryable=True, rate_limited=True,
                           retry_at=retry_at(headers, clock) or clock() + RATE_LIMIT_FALLBACK)
    if status >= 500 or status == 408:
        return StatusError(text, retryable=True, retry_at=retry_at(headers, clock))
    return StatusError(text, retryable=False)


def short(text: str, limit: int = MAX_DESCRIPTION) -> str:
    """`text` on one line, cut to `limit` characters with an ellipsis."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


async def post_json(client: httpx.AsyncClient, url: str, body: dict[str, object], headers: dict[str, str],
                    clock: Callable[[], float] = time.time) -> None:
    """POST JSON to a forge's API; any failure becomes a classified StatusError (never with the headers' token)."""
    try:
        response = await client.post(url, json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise StatusError(f"cannot reach {_origin(url)}: {type(exc).__name__}", retryable=True) from None
    if response.status_code >= 300:
        raise failure(response.status_code, response.headers, _message(response), clock)


def _message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:200]
    return str(data.get("message") or data) if isinstance(data, dict) else str(data)[:200]


def _origin(url: str) -> str:
    parts = httpx.URL(url)
    return f"{parts.scheme}://{parts.host}" + (f":{parts.port}" if parts.port else "")
