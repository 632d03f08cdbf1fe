"""One parser of repository addresses: what each caller (secret globs, cache keys, the fetch remote) gets from it.

The expected values are the ones the three parsers this one replaced gave (executor.repo_slug, cache.repo_id,
workspace._Remote.parse), so that no cache key, secret grant or fetch URL changed with the move.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from runner.cache import repo_id
from runner.errors import WorkspaceError
from runner.repos import parse_repo
from runner.workspace import _Remote

GH = "http.https://github.com/.extraHeader"

# repo, slug (secret globs), cache repo id, fetch URL, local, header key (with a git token configured)
CASES = [
    ("https://github.com/acme/app.git", "acme/app", "github.com/acme/app", "https://github.com/acme/app.git",
     False, GH),
    ("https://github.com/acme/app", "acme/app", "github.com/acme/app", "https://github.com/acme/app", False, GH),
    ("https://GitHub.com/acme/app.git", "acme/app", "github.com/acme/app", "https://GitHub.com/acme/app.git",
     False, "http.https://GitHub.com/.extraHeader"),
    ("https://github.com/acme/app/", "acme/app", "github.com/acme/app", "https://github.com/acme/app/", False, GH),
    ("https://github.com/acme/app.git/", "acme/app", "github.com/acme/app", "https://github.com/acme/app.git/",
     False, GH),
    ("https://token@github.com/acme/app.git", "acme/app", "github.com/acme/app", "https://github.com/acme/app.git",
     False, GH),
    ("https://user:p%40ss@github.com:8443/acme/app.git/", "acme/app", "github.com/acme/app",
     "https://github.com:8443/acme/app.git/", False, "http.https://github.com:8443/.extraHeader"),
    ("http://user:pw@gitea.local/acme/app", "acme/app", "gitea.local/acme/app", "http://gitea.local/acme/app",
     False, "http.http://gitea.local/.extraHeader"),
    ("http://gitea.local/acme/app", "acme/app", "gitea.local/acme/app", "http://gitea.local/acme/app", False, ""),
    ("https://github.com/group/sub/app.git", "sub/app", "github.com/group/sub/app",
     "https://github.com/group/sub/app.git", False, GH),
    ("https://github.com/acme/app.git?x=1", "acme/app", "github.com/acme/app", "https://github.com/acme/app.git?x=1",
     False, GH),
    ("https://h/a b/%2e%2e", "a b/%2e%2e", "h/a%20b/%252e%252e", "https://h/a b/%2e%2e", False,
     "http.https://h/.extraHeader"),
    ("git@github.com:acme/app.git", "acme/app", "github.com/acme/app", "git@github.com:acme/app.git", False, ""),
    ("git@GitHub.com:acme/app", "acme/app", "github.com/acme/app", "git@GitHub.com:acme/app", False, ""),
    ("git@github.com:acme/app.git/", "acme/app", "github.com/acme/app", "git@github.com:acme/app.git/", False, ""),
    ("ssh://git@github.com/acme/app.git", "acme/app", "github.com/acme/app", "ssh://git@github.com/acme/app.git",
     False, ""),
    ("ssh://git@github.com:2222/acme/app.git", "acme/app", "github.com/acme/app",
     "ssh://git@github.com:2222/acme/app.git", False, ""),
    ("git://example.org/acme/app.git", "acme/app", "example.org/acme/app", "git://example.org/acme/app.git",
     False, ""),
    ("file:///srv/repos/app.git", "repos/app", "local/srv/repos/app", "file:///srv/repos/app.git", True, ""),
    ("file:///srv/repos/app/", "repos/app", "local/srv/repos/app", "file:///srv/repos/app/", True, ""),
    ("/srv/repos/app", "repos/app", "local/srv/repos/app", "/srv/repos/app", True, ""),
    ("/srv/repos/app.git", "repos/app", "local/srv/repos/app", "/srv/repos/app.git", True, ""),
    ("/srv/repos/app/", "repos/app", "local/srv/repos/app", "/srv/repos/app", True, ""),
    ("/srv/git/../repos/app", "repos/app", "local/srv/repos/app", "/srv/repos/app", True, ""),
]


@pytest.mark.parametrize(("repo", "slug", "cache_id", "url", "local", "header_key"), CASES)
def test_every_caller_gets_what_it_got_before(repo: str, slug: str, cache_id: str, url: str, local: bool,
                                              header_key: str) -> None:
    assert parse_repo(repo).slug == slug
    assert repo_id(repo) == cache_id
    remote = _Remote.parse(repo, "TOKEN-0123")
    assert (remote.url, remote.local, remote.header_key) == (url, local, header_key)


def test_a_relative_path_is_made_absolute_for_git_but_its_slug_is_as_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    address = parse_repo("repos/app.git")
    assert (address.local, address.url, address.slug) == (True, str(tmp_path / "repos/app.git"), "repos/app")
    assert repo_id("repos/app.git") == "local" + str(tmp_path / "repos/app")
    assert _Remote.parse("repos/app.git", None).url == str(tmp_path / "repos/app.git")


def test_credentials_are_split_off_and_kept_out_of_the_repr() -> None:
    address = parse_repo("https://user:p%40ss@GitHub.com:8443/acme/app.git")
    assert (address.scheme, address.host, address.hostport, address.path) == (
        "https", "github.com", "GitHub.com:8443", "/acme/app.git")
    assert (address.username, address.password) == ("user", "p%40ss")
    assert "p%40ss" not in address.url and "p%40ss" not in repr(address) and "user" not in repr(address)
    token_only = parse_repo("https://TOKEN123@github.com/acme/app")
    assert (token_only.username, token_only.password) == ("TOKEN123", None)
    assert parse_repo("https://github.com/acme/app").username is None
    scp = parse_repo("git@GitHub.com:acme/app.git")
    assert (scp.scheme, scp.scp, scp.host, scp.username, scp.path) == ("ssh", True, "github.com", "git",
                                                                        "acme/app.git")


def test_the_fetch_remote_carries_the_credentials_as_a_header_only() -> None:
    token = _Remote.parse("https://github.com/acme/app.git", "TOK")
    assert token.header == "Authorization: Basic " + base64.b64encode(b"x-access-token:TOK").decode()
    assert token.secrets == ("TOK", base64.b64encode(b"x-access-token:TOK").decode())
    own = _Remote.parse("https://user:p%40ss@github.com/acme/app.git", "TOK")  # its own userinfo wins
    encoded = base64.b64encode(b"user:p@ss").decode()
    assert own.header == f"Authorization: Basic {encoded}" and own.secrets == ("p@ss", "p%40ss", encoded)
    user_only = _Remote.parse("https://tok3n@github.com/acme/app.git", None)  # the user part is the secret
    assert user_only.secrets == ("tok3n", "tok3n", base64.b64encode(b"tok3n:").decode())
    assert _Remote.parse("http://gitea.local/acme/app", "TOK").header == ""  # never a token over plain http
    assert _Remote.parse("ssh://git@github.com/acme/app.git", "TOK").header == ""


def test_git_reads_a_colon_before_the_first_slash_as_ssh() -> None:
    # git's rule, which the fetch always used; the old secret-glob parser read `host:acme/app` as a path.
    assert parse_repo("github.com:acme/app.git").slug == "acme/app"
    assert repo_id("github.com:acme/app.git") == "github.com/acme/app"
    assert parse_repo("./with:colon/app").local  # a slash first: a path


def test_an_address_urllib_cannot_split_is_an_invalid_request_not_an_internal_error() -> None:
    with pytest.raises(ValueError):
        parse_repo("https://[::1/acme/app")
    with pytest.raises(WorkspaceError, match="invalid repository") as caught:
        _Remote.parse("https://[::1/acme/app", None)
    assert caught.value.infra is False
