"""Forge-neutral events (a push, a pull request) and the JobSpecs they become; typed access to payloads."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.errors import PayloadError
from config.settings import Settings
from runner.models import JobSpec

_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_ZEROS = re.compile(r"0+")
MAX_TEXT = 2000  # a commit message or title kept in a job's meta; the rest is in the forge
_PATHS: dict[str, tuple[str, ...]] = {}  # the adapters' dotted paths (literals in their code), split once


class Payload:
    """Dotted-path reads of a JSON object that raise PayloadError naming the missing or mistyped key."""

    def __init__(self, data: Any, event: str) -> None:
        if not isinstance(data, dict):
            raise PayloadError(event, "(body)", f"expected a JSON object, got {_kind(data)}")
        self.data = data
        self.event = event

    def get(self, path: str) -> Any:
        """The value at `path` (`a.b.c`), or None when any part is absent or null."""
        parts = _PATHS.get(path)
        if parts is None:
            parts = _PATHS[path] = tuple(path.split("."))
        value: Any = self.data
        try:
            for part in parts:
                value = value.get(part)
        except AttributeError:  # a part that is not an object (null, a string, an array): an absent value
            return None
        return value

    def _fail(self, path: str, expected: str) -> PayloadError:
        value = self.get(path)
        got = "missing" if value is None else f"got {_kind(value)}"
        return PayloadError(self.event, path, f"expected {expected} ({got})")

    def text(self, path: str) -> str:
        """A required non-empty string."""
        value = self.get(path)
        if not isinstance(value, str) or not value or "\x00" in value:
            raise self._fail(path, "a non-empty string")
        return value

    def optional_text(self, path: str, limit: int = MAX_TEXT) -> str:
        """A string, or "" when absent, null or not a string; cut to `limit` characters."""
        value = self.get(path)
        return value[:limit].replace("\x00", "") if isinstance(value, str) else ""

    def optional_sha(self, path: str) -> str:
        """A full commit sha (lowercased), or "" when absent, not one, or all zeros (a ref that did not exist)."""
        value = self.get(path)
        found = value.lower() if isinstance(value, str) and _SHA.fullmatch(value.lower()) else ""
        return "" if is_deletion(found) else found

    def sha(self, path: str) -> str:
        """A required full commit sha (40 or 64 hex digits, lowercased); all zeros is allowed (a deletion)."""
        value = self.get(path)
        if not isinstance(value, str) or not (_SHA.fullmatch(value.lower()) or _ZEROS.fullmatch(value)):
            raise self._fail(path, "a full commit sha")
        return value.lower()

    def integer(self, path: str) -> int:
        """A required positive integer."""
        value = self.get(path)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self._fail(path, "a positive integer")
        return value

    def flag(self, path: str) -> bool:
        """True only for a JSON true."""
        return self.get(path) is True

    def optional_id(self, path: str) -> str:
        """An integer or string id as a string, "" when absent."""
        value = self.get(path)
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            return ""
        return str(value)[:100]


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def is_deletion(sha: str) -> bool:
    """A forge's `after` of all zeros: the ref was deleted."""
    return bool(_ZEROS.fullmatch(sha))


@dataclass(frozen=True)
class Origin:
    """Where an event came from: the forge, the repository and the delivery, plus what statuses need."""

    forge: str  # github, gitea, gitlab
    repository: str  # owner/name (GitLab: namespace/path)
    delivery: str
    status: Mapping[str, str] = field(default_factory=dict)  # forge-specific: installation_id, project_id, api_url


def api_url_of(page_url: str, repository: str, api_path: str) -> str:
    """The API root of the instance a repository page lives on (`https://host/sub/o/r`, `o/r` and `/api/v1` ->
    `https://host/sub/api/v1`); "" when the page is not the repository's."""
    base = page_url.rstrip("/")
    return base.removesuffix("/" + repository) + api_path if base.endswith("/" + repository) else ""


def instance_origin(forge: str, repository: str, delivery: str, page_url: str, api_path: str,
                    **status: str) -> Origin:
    """The Origin of a self-hosted forge's event (Gitea, Forgejo, GitLab): without a configured api_url, its
    statuses go to the API of the instance that sent it, found from the repository's page."""
    return Origin(forge, repository, delivery, {**status, "api_url": api_url_of(page_url, repository, api_path)})


@dataclass(frozen=True)
class Push:
    """A push of a branch or a tag."""

    origin: Origin
    clone_url: str
    ref: str  # refs/heads/NAME or refs/tags/NAME
    sha: str
    pusher: str
    message: str  # the head commit's
    before: str = ""  # the sha the ref pointed at before the push; "" or zeros: a new ref (or the forge said none)
    default_branch: str = ""  # the repository's, as the forge names it: a new branch's changes are against it


@dataclass(frozen=True)
class PullRequest:
    """A pull (merge) request that needs a build: opened, new commits, reopened, ready for review."""

    origin: Origin
    clone_url: str  # of the base repository, which serves `ref`
    number: int
    ref: str  # the forge's ref of the head in the base repository: refs/pull/N/head, refs/merge-requests/N/head
    sha: str  # head commit
    base_ref: str  # base branch name
    fork: bool
    draft: bool
    sender: str
    title: str
    action: str
    message: str = ""  # the head commit's, when the forge sends it


def concurrency_group(origin: Origin, key: str) -> str:
    """`{forge}:{repo}:{branch}` or `{forge}:{repo}:pr-{N}`: at most one running job, newer ones supersede."""
    return f"{origin.forge}:{origin.repository}:{key}"


def _meta(origin: Origin, **values: str) -> dict[str, str]:
    meta = {"forge": origin.forge, "repository": origin.repository, "delivery": origin.delivery}
    meta.update({k: v for k, v in origin.status.items() if v})
    meta.update({k: v for k, v in values.items() if v})
    return meta


def push_job(push: Push, settings: Settings) -> JobSpec:
    """The job for a branch or tag push, at the pushed sha, with the server's default priority."""
    tag = push.ref.startswith("refs/tags/")
    key = push.ref if tag else push.ref.removeprefix("refs/heads/")
    return JobSpec(
        repo=push.clone_url, ref=push.ref, sha=push.sha, event="tag" if tag else "push",
        priority=settings.queue.default_priority, concurrency_group=concurrency_group(push.origin, key),
        meta=_meta(push.origin, pusher=push.pusher, sender=push.pusher, message=push.message, before=push.before,
                   default_branch=push.default_branch),
    )


def pull_job(pr: PullRequest, settings: Settings) -> JobSpec:
    """The job for a pull request's head commit; a fork's job gets no secrets and only its own cache scope."""
    return JobSpec(
        repo=pr.clone_url, ref=pr.ref, sha=pr.sha, event="pull_request", priority=settings.queue.default_priority,
        concurrency_group=concurrency_group(pr.origin, f"pr-{pr.number}"), fork=pr.fork, pr_number=pr.number,
        base_ref=pr.base_ref,
        meta=_meta(pr.origin, sender=pr.sender, title=pr.title, action=pr.action, message=pr.message or pr.title,
                   draft="true" if pr.draft else ""),
    )


@dataclass
class Plan:
    """What handlers decided for one delivery: jobs to enqueue, or why there are none.

    Mutable on purpose: gidgethub's Router.dispatch returns nothing, so handlers fill the plan they are given.
    """

    settings: Settings
    specs: list[JobSpec] = field(default_factory=list)
    supersede: bool = False
    reason: str = ""
    pong: bool = False

    def push(self, push: Push) -> None:
        """A branch push supersedes the branch's older jobs; a tag push supersedes nothing."""
        self.specs.append(push_job(push, self.settings))
        self.supersede = self.supersede or push.ref.startswith("refs/heads/")

    def pull_request(self, pr: PullRequest) -> None:
        if pr.draft and not self.settings.server.run_drafts:
            self.skip(f"pull request {pr.number} is a draft and server.run_drafts is false")
            return
        self.specs.append(pull_job(pr, self.settings))
        self.supersede = True

    def skip(self, reason: str) -> None:
        self.reason = reason

    def skips_push(self, ref: str, sha: str, *, deleted: bool = False) -> bool:
        """True, having said why, for a push that builds nothing: a deleted ref, or one neither branch nor tag."""
        if deleted or is_deletion(sha):
            self.skip(f"{ref} was deleted")
            return True
        if not ref.startswith(("refs/heads/", "refs/tags/")):
            self.skip(f"a push to {ref} runs nothing")
            return True
        return False

