"""GitHub commit statuses through gidgethub's httpx backend, with a token or as a GitHub App."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from gidgethub import HTTPException, apps
from gidgethub.httpx import GitHubAPI

from bot.errors import StatusError
from bot.status.base import CommitStatus, failure
from runner.models import JobSpec

REQUESTER = "forgeci"  # GitHub asks every API client for a User-Agent naming it
TOKEN_MARGIN = 60.0  # renew an installation token this long before it expires


@dataclass(frozen=True)
class AppCredentials:
    """A GitHub App: its id and PEM private key (read from github.private_key_path)."""

    app_id: int
    private_key: str

    def jwt(self) -> str:
        return apps.get_jwt(app_id=str(self.app_id), private_key=self.private_key)


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float  # wall clock


class GitHubStatuses:
    """Posts to `POST /repos/{owner}/{repo}/statuses/{sha}` of the configured API (GitHub Enterprise too)."""

    forge = "github"

    def __init__(self, client: httpx.AsyncClient, api_url: str, *, token: str | None = None,
                 app: AppCredentials | None = None, clock: Callable[[], float] = time.time) -> None:
        if (token is None) == (app is None):
            raise ValueError("GitHubStatuses needs a token or an App, not both")
        self.api_url = api_url
        self._gh = GitHubAPI(client, REQUESTER, base_url=api_url)
        self._token = token
        self._app = app
        self._clock = clock
        self._installations: dict[str, str] = {}  # owner/repo -> installation id, when deliveries lack it
        self._tokens: dict[str, _Token] = {}  # installation id -> its token, until it expires
        self._locks: dict[str, asyncio.Lock] = {}

    def target(self, spec: JobSpec) -> str | None:
        repository = spec.meta.get("repository", "")
        return repository if repository.count("/") == 1 and spec.sha else None

    async def post(self, spec: JobSpec, status: CommitStatus) -> None:
        owner, repo = spec.meta["repository"].split("/")
        token = await self._auth(spec)
        try:
            await self._gh.post(
                "/repos/{owner}/{repo}/statuses/{sha}", {"owner": owner, "repo": repo, "sha": spec.sha or ""},
                data={"state": status.state, "target_url": status.target_url, "description": status.description,
                      "context": status.context},
                oauth_token=token,
            )
        except HTTPException as exc:
            if exc.status_code == 401 and self._app is not None:
                # A revoked or expired installation token: forget it, the retry fetches a new one.
                self._tokens.pop(self._installations.get(spec.meta["repository"], "")
                                 or spec.meta.get("installation_id", ""), None)
                raise StatusError("the installation token was refused", retryable=True) from None
            raise self._failure(exc) from None
        except httpx.HTTPError as exc:
            raise StatusError(f"cannot reach {self.api_url}: {type(exc).__name__}", retryable=True) from None

    def _failure(self, exc: HTTPException) -> StatusError:
        message = next((arg for arg in exc.args if isinstance(arg, str)), "")
        return failure(int(exc.status_code), exc.headers, message, self._clock)

    async def _auth(self, spec: JobSpec) -> str:
        """The token to post with: the configured one, or the App installation's (fetched, then cached)."""
        if self._token is not None:
            return self._token
        assert self._app is not None
        repository = spec.meta["repository"]
        installation = spec.meta.get("installation_id") or self._installations.get(repository)
        lock = self._locks.setdefault(installation or repository, asyncio.Lock())
        async with lock:  # one token request per installation, however many jobs post at once
            try:
                if not installation:
                    owner, repo = repository.split("/")
                    found = await self._gh.getitem("/repos/{owner}/{repo}/installation",
                                                   {"owner": owner, "repo": repo}, jwt=self._app.jwt())
                    installation = self._installations[repository] = str(found["id"])
                cached = self._tokens.get(installation)
                if cached is not None and cached.expires_at - TOKEN_MARGIN > self._clock():
                    return cached.value
                answer = await apps.get_installation_access_token(
                    self._gh, installation_id=installation, app_id=str(self._app.app_id),
                    private_key=self._app.private_key)
                token = _Token(str(answer["token"]), _epoch(answer.get("expires_at")) or self._clock() + 3000)
            except HTTPException as exc:
                raise self._failure(exc) from None
            except httpx.HTTPError as exc:
                raise StatusError(f"cannot reach {self.api_url}: {type(exc).__name__}", retryable=True) from None
            except (KeyError, TypeError, AttributeError) as exc:
                raise StatusError(f"unexpected answer from {self.api_url}: {exc}", retryable=False) from None
            self._tokens[installation] = token
            return token.value


def _epoch(stamp: object) -> float | None:
    """An ISO 8601 time (`2016-07-11T22:14:10Z`) as a wall-clock epoch."""
    if not isinstance(stamp, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC).timestamp()
