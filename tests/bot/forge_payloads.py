"""Gitea and GitLab delivery bodies, shaped after the examples in each forge's webhook documentation."""

from __future__ import annotations

import copy
from typing import Any

GITEA_HEAD = "bffeb74224043ba2feb48d137756c8a9331c449a"
GITLAB_HEAD = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"

_GITEA_USER = {"id": 1, "login": "gitea", "full_name": "Gitea", "email": "someone@gitea.io",
               "avatar_url": "https://gitea.example.test/avatars/1", "username": "gitea"}
_GITEA_REPO = {
    "id": 140, "owner": _GITEA_USER, "name": "webhooks", "full_name": "gitea/webhooks", "description": "",
    "private": False, "fork": False, "html_url": "https://gitea.example.test/gitea/webhooks",
    "ssh_url": "ssh://gitea@gitea.example.test:2222/gitea/webhooks.git",
    "clone_url": "https://gitea.example.test/gitea/webhooks.git", "default_branch": "master",
}


def gitea_push(ref: str = "refs/heads/develop", after: str = GITEA_HEAD) -> dict[str, Any]:
    """Gitea's documented push example: the newest commit first in `commits`."""
    return {
        "ref": ref, "before": "28e1879d029cb852e4844d9c718537df08844e03", "after": after,
        "compare_url": f"https://gitea.example.test/gitea/webhooks/compare/28e1879d029c...{after[:12]}",
        "commits": [{
            "id": after, "message": "Webhooks Yay!\n", "url": f"https://gitea.example.test/gitea/webhooks/commit/{after}",
            "author": {"name": "Gitea", "email": "someone@gitea.io", "username": "gitea"},
            "committer": {"name": "Gitea", "email": "someone@gitea.io", "username": "gitea"},
            "timestamp": "2017-03-13T13:52:11-04:00",
        }],
        "repository": copy.deepcopy(_GITEA_REPO), "pusher": _GITEA_USER, "sender": _GITEA_USER,
    }


def gitea_pull_request(action: str = "opened", *, fork: bool = False,
                       sha: str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c") -> dict[str, Any]:
    """Gitea's pull_request delivery (`synchronized` when commits are pushed to it)."""
    head_repo = copy.deepcopy(_GITEA_REPO)
    if fork:
        head_repo.update(id=141, full_name="mallory/webhooks", fork=True)
    return {
        "action": action, "number": 1,
        "pull_request": {
            "id": 1, "url": "https://gitea.example.test/gitea/webhooks/pulls/1", "number": 1, "user": _GITEA_USER,
            "title": "Update the README with new information", "body": "please merge", "state": "open",
            "head_branch": "feature/changes",
            "head": {"label": "feature/changes", "ref": "feature/changes", "sha": sha, "repo_id": head_repo["id"],
                     "repo": head_repo},
            "base_branch": "master",
            "base": {"label": "master", "ref": "master", "sha": "9353195a19e45482665306e466c832c46560532d",
                     "repo_id": 140, "repo": copy.deepcopy(_GITEA_REPO)},
            "merged": False, "draft": False,
        },
        "repository": copy.deepcopy(_GITEA_REPO), "sender": _GITEA_USER,
    }


_GITLAB_PROJECT = {
    "id": 15, "name": "Diaspora", "description": "", "web_url": "https://gitlab.example.test/mike/diaspora",
    "avatar_url": None, "git_ssh_url": "git@gitlab.example.test:mike/diaspora.git",
    "git_http_url": "https://gitlab.example.test/mike/diaspora.git", "namespace": "Mike", "visibility_level": 0,
    "path_with_namespace": "mike/diaspora", "default_branch": "master",
}


def gitlab_push(ref: str = "refs/heads/master", after: str = GITLAB_HEAD) -> dict[str, Any]:
    """GitLab's documented Push Hook example: commits oldest first, the head's id is `after`."""
    kind = "tag_push" if ref.startswith("refs/tags/") else "push"
    return {
        "object_kind": kind, "event_name": kind, "before": "95790bf891e76fee5e1747ab589903a6a1f80f22",
        "after": after, "ref": ref, "ref_protected": True, "checkout_sha": after, "user_id": 4,
        "user_name": "John Smith", "user_username": "jsmith", "user_email": "john@example.com", "project_id": 15,
        "project": copy.deepcopy(_GITLAB_PROJECT),
        "commits": [
            {"id": "b6568db1bc1dcd7f8b4d5a946b0b91f9dacd7327", "message": "Update Catalan translation to e38cb41.",
             "title": "Update Catalan translation to e38cb41.", "timestamp": "2011-12-12T14:27:31+02:00"},
            {"id": after, "message": "fixed readme", "title": "fixed readme",
             "timestamp": "2012-01-03T23:36:29+02:00"},
        ],
        "total_commits_count": 2,
    }


def gitlab_merge_request(action: str = "open", *, fork: bool = False, oldrev: str | None = None,
                         changes: dict[str, Any] | None = None, draft: bool = False) -> dict[str, Any]:
    """GitLab's Merge Request Hook; `oldrev` is present on an `update` that pushed new commits."""
    attributes: dict[str, Any] = {
        "id": 99, "iid": 1, "target_branch": "master", "source_branch": "ms-viewport",
        "source_project_id": 16 if fork else 15, "target_project_id": 15, "title": "MS-Viewport",
        "state": "opened", "merge_status": "unchecked", "draft": draft, "work_in_progress": draft,
        "last_commit": {"id": GITLAB_HEAD, "message": "fixed readme", "title": "Update file README.md"},
        "action": action,
    }
    if oldrev is not None:
        attributes["oldrev"] = oldrev
    return {
        "object_kind": "merge_request", "event_type": "merge_request",
        "user": {"id": 1, "name": "Administrator", "username": "root"},
        "project": copy.deepcopy(_GITLAB_PROJECT), "object_attributes": attributes, "changes": changes or {},
    }
