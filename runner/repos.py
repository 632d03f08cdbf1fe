"""Repository addresses (clone URLs, scp-like `user@host:path`, local paths) parsed once, the way git reads them."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

# git's rule: without `://`, a colon before the first slash makes `host:path` an ssh address, anything else a path.
_SCP = re.compile(r"[^/]*:")


@dataclass(frozen=True)
class RepoAddress:
    """One repository address taken apart. Credentials (`https://user:pass@host/...`) are split off into
    `username` and `password`, kept as written (percent-encoded), and left out of `url` and of the repr."""

    raw: str = field(repr=False)  # as given; may carry credentials
    scheme: str  # lower-case URL scheme; "ssh" for scp-like `user@host:path`; "" for a local path
    host: str  # lower-case host name without port or userinfo; "" for a local path
    hostport: str  # the host (and `:port`) as written, without userinfo; "" for a local path
    path: str  # as written: a URL's path (still percent-encoded), what follows an scp-like colon, or the path
    url: str  # where git fetches from: http(s) without credentials, a local path made absolute, else as given
    local: bool = False  # a `file://` URL or a path on this host
    scp: bool = False  # written `user@host:path`
    username: str | None = field(default=None, repr=False)  # None: no userinfo in the address
    password: str | None = field(default=None, repr=False)

    @property
    def slug(self) -> str:
        """`owner/name`: the last two parts of the path, without a trailing slash and `.git` (secret globs match it)."""
        parts = [p for p in self.path.removesuffix("/").removesuffix(".git").split("/") if p]
        return "/".join(parts[-2:])

    @property
    def local_path(self) -> str:
        """The path on this host of a local repository: a `file://` URL's path, or the absolute path."""
        return self.url if not self.scheme else self.path


def parse_repo(repo: str) -> RepoAddress:
    """Take `repo` apart. ValueError for a URL that urllib cannot split (a bad `[IPv6]` host)."""
    if "://" in repo:
        parts = urlsplit(repo)
        scheme = parts.scheme.lower()
        hostport = parts.netloc.rpartition("@")[2]
        url = urlunsplit(parts._replace(netloc=hostport)) if scheme in ("http", "https") else repo
        return RepoAddress(repo, scheme, (parts.hostname or "").lower(), hostport, parts.path, url,
                           local=scheme == "file", username=parts.username, password=parts.password)
    if _SCP.match(repo):
        userhost, _, path = repo.partition(":")
        user, at, hostport = userhost.rpartition("@")
        return RepoAddress(repo, "ssh", hostport.lower(), hostport, path, repo, scp=True,
                           username=user if at else None)
    # Absolute now: git runs from the Podman user's home, not from our working directory.
    return RepoAddress(repo, "", "", "", repo, os.path.abspath(repo), local=True)
