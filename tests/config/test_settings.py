"""Server settings: defaults, parsing, validation, lookup order, secrets."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

import config.settings as settings_module
from config.errors import ConfigError
from config.settings import (
    SecretSpec,
    Settings,
    env_value,
    find_settings_file,
    load_settings,
    parse_settings,
    resolve_secrets,
)

# design.md's example, verbatim: every value in it is a default (bar the example secret).
DESIGN_EXAMPLE = '''
data_dir = "~/.local/share/forgeci"          # root: /var/lib/forgeci; queue db, logs, workspaces, local store

[server]
host = "127.0.0.1"
port = 8080
public_url = "http://127.0.0.1:8080"         # used in commit status target_url
api_token_env = "FORGECI_API_TOKEN"          # required for mutating endpoints when set
protect_reads = false                         # true: reads and the dashboard need the token too
status_context = "forgeci/ci"                 # commit status context
run_drafts = true                             # build draft pull requests

[queue]
max_concurrent = 2
default_priority = 5                          # 0..10, higher runs first; webhook jobs get it
max_retries = 3                               # automatic retries of infrastructure faults
lease_seconds = 60
cancel_superseded = true                      # a newer push to a branch / PR cancels its older jobs

[runner]
image = "localhost/forgeci-job:latest"
podman_user = "forgeci"                       # when started as root, Podman runs as this user (rootless)
podman_url = ""                               # an existing Podman API socket; "" = forgeci starts its own
network = "slirp4netns"                       # or "none"
memory = "4g"
pids_limit = 4096
ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
step_timeout = "5m"                           # default per step
job_timeout = "1h"                            # default per job
ca_bundle = "/etc/ssl/certs/ca-certificates.crt"   # host trust store mounted into jobs; "" = off

[storage]
url = ""                                     # "" = file://<data_dir>/store; or "s3://forgeci?endpoint=http://127.0.0.1:9000&secure=false"
access_key_env = "FORGECI_S3_ACCESS_KEY"
secret_key_env = "FORGECI_S3_SECRET_KEY"

[retention]
snapshot_days = 7
cache_days = 30
job_days = 7

[secrets]                                     # name -> where its value lives; masked in every log
NPM_TOKEN = { env = "FORGECI_SECRET_NPM_TOKEN", repos = ["acme/*"] }

[git]
token_env = "FORGECI_GIT_TOKEN"               # credentials for cloning private repositories over https

[github]
api_url = "https://api.github.com"           # GitHub Enterprise: https://HOST/api/v3
webhook_secret_env = "FORGECI_GITHUB_WEBHOOK_SECRET"
token_env = "FORGECI_GITHUB_TOKEN"            # a token, or a GitHub App:
app_id = 0                                    #   the App's id (0 = not an App)
private_key_path = ""                         #   its PEM key

[gitea]                                       # Gitea and Forgejo
api_url = ""
webhook_secret_env = "FORGECI_GITEA_WEBHOOK_SECRET"
token_env = "FORGECI_GITEA_TOKEN"

[gitlab]
api_url = ""
webhook_secret_env = "FORGECI_GITLAB_WEBHOOK_SECRET"
token_env = "FORGECI_GITLAB_TOKEN"
'''


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake non-root user whose home is a temporary directory."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    return tmp_path


def issue_map(exc: pytest.ExceptionInfo[ConfigError]) -> dict[str, str]:
    return {issue.path: issue.message for issue in exc.value.issues}


def test_design_example_equals_the_defaults(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module, "default_ca_bundle", lambda: "/etc/ssl/certs/ca-certificates.crt")
    parsed = parse_settings(DESIGN_EXAMPLE, "forgeci.toml")
    assert parsed.secrets == {"NPM_TOKEN": SecretSpec(env="FORGECI_SECRET_NPM_TOKEN", repos=("acme/*",))}
    assert dataclasses.replace(parsed, secrets={}) == Settings.default()


def test_default_values_are_design_values(home: Path) -> None:
    s = Settings.default()
    assert s.data_dir == home / ".local/share/forgeci"
    assert (s.server.host, s.server.port, s.server.public_url) == ("127.0.0.1", 8080, "http://127.0.0.1:8080")
    assert (s.server.api_token_env, s.server.protect_reads) == ("FORGECI_API_TOKEN", False)
    assert (s.server.status_context, s.server.run_drafts) == ("forgeci/ci", True)
    assert dataclasses.astuple(s.queue) == (2, 5, 3, 60, True, "", "FORGECI_QUEUE_PASSWORD")
    assert s.runner.image == "localhost/forgeci-job:latest"
    assert (s.runner.podman_user, s.runner.podman_url, s.runner.network) == ("forgeci", "", "slirp4netns")
    assert (s.runner.memory, s.runner.pids_limit) == ("4g", 4096)
    assert s.runner.ulimits == ("nofile=20000:20000", "nproc=4096:4096")
    assert (s.runner.step_timeout, s.runner.job_timeout, s.runner.shutdown_grace) == (300.0, 3600.0, 30.0)
    assert dataclasses.astuple(s.storage) == ("", "FORGECI_S3_ACCESS_KEY", "FORGECI_S3_SECRET_KEY", 3.0, 30.0)
    assert dataclasses.astuple(s.retention) == (7, 30, 7, 7, 14, 10 << 30)
    assert s.runner.max_artifact_size == 1 << 30
    assert s.secrets == {}
    assert s.git.token_env == "FORGECI_GIT_TOKEN"
    assert dataclasses.astuple(s.github) == (
        "https://api.github.com", "FORGECI_GITHUB_WEBHOOK_SECRET", "FORGECI_GITHUB_TOKEN", 0, "")
    assert dataclasses.astuple(s.gitea) == ("", "FORGECI_GITEA_WEBHOOK_SECRET", "FORGECI_GITEA_TOKEN")
    assert dataclasses.astuple(s.gitlab) == ("", "FORGECI_GITLAB_WEBHOOK_SECRET", "FORGECI_GITLAB_TOKEN")
    assert parse_settings("", "empty.toml") == s


def test_data_dir_default_depends_on_root(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.default().data_dir == home / ".local/share/forgeci"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert Settings.default().data_dir == Path("/var/lib/forgeci")
    assert parse_settings("[server]\nport = 9000\n", "f").data_dir == Path("/var/lib/forgeci")


def test_tilde_is_expanded_in_every_path(home: Path) -> None:
    s = parse_settings(
        'data_dir = "~/ci"\n[runner]\nca_bundle = "~/ca.pem"\n[github]\nprivate_key_path = "~/app.pem"\n', "f")
    assert s.data_dir == home / "ci"
    assert s.runner.ca_bundle == str(home / "ca.pem")
    assert s.github.private_key_path == str(home / "app.pem")


def test_ca_bundle_default_is_the_host_bundle_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = tmp_path / "ca.crt"
    monkeypatch.setattr(settings_module, "_CA_BUNDLES", (str(tmp_path / "missing.crt"), str(bundle)))
    assert Settings.default().runner.ca_bundle == ""
    bundle.write_text("certs")
    assert Settings.default().runner.ca_bundle == str(bundle)
    assert parse_settings('[runner]\nca_bundle = ""\n', "f").runner.ca_bundle == ""


def test_store_url(home: Path) -> None:
    assert Settings.default().store_url == f"file://{home}/.local/share/forgeci/store"
    s3 = "s3://forgeci?endpoint=http://127.0.0.1:9000&secure=false"
    assert parse_settings(f'[storage]\nurl = "{s3}"\n', "f").store_url == s3


def test_public_url_follows_host_and_port_unless_given() -> None:
    assert parse_settings("[server]\nport = 9000\n", "f").server.public_url == "http://127.0.0.1:9000"
    assert parse_settings('[server]\nhost = "::1"\n', "f").server.public_url == "http://[::1]:8080"
    given = '[server]\nport = 9000\npublic_url = "https://ci.example.com"\n'
    assert parse_settings(given, "f").server.public_url == "https://ci.example.com"


def test_values_are_typed_and_frozen() -> None:
    s = parse_settings('[runner]\nstep_timeout = "90s"\njob_timeout = 7200\nulimits = ["nofile=1:2"]\n', "f")
    assert (s.runner.step_timeout, s.runner.job_timeout, s.runner.ulimits) == (90.0, 7200.0, ("nofile=1:2",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.runner = s.runner  # type: ignore[misc]


def test_every_error_is_reported_with_its_key_path() -> None:
    text = '''
data_dir = ""
[server]
port = 0
protect_reads = "yes"
[queue]
max_concurrent = 0
default_priority = 11
lease_seconds = true
[runner]
network = "host"
step_timeout = "soon"
ulimits = ["nofile=1:2", "bogus"]
memory = "lots"
[sever]
port = 1
[storage]
url = "ftp://x"
access_key_env = "NOT VALID"
[secrets]
NPM_TOKEN = { env = "", repos = ["acme/*"] }
GOOD = { env = "X", repo = [] }
'''
    with pytest.raises(ConfigError) as exc:
        parse_settings(text, "/etc/forgeci.toml")
    issues = issue_map(exc)
    assert set(issues) == {
        "data_dir", "server.port", "server.protect_reads", "queue.max_concurrent", "queue.default_priority",
        "queue.lease_seconds", "runner.network", "runner.step_timeout", "runner.ulimits", "runner.memory",
        "sever", "storage.url", "storage.access_key_env", "secrets.NPM_TOKEN.env", "secrets.GOOD.repo",
    }
    assert {i.source for i in exc.value.issues} == {"/etc/forgeci.toml"}
    assert issues["server.port"] == "expected an integer from 1 to 65535, got 0"
    assert issues["queue.default_priority"] == "expected an integer from 0 to 10, got 11"
    assert issues["queue.max_concurrent"] == "expected an integer >= 1, got 0"
    assert issues["queue.lease_seconds"] == "expected an integer >= 1, got true"
    assert issues["runner.step_timeout"] == "expected a duration like 90s, 5m or 1h30m, got 'soon'"
    assert issues["runner.network"].startswith("expected one of 'slirp4netns', 'pasta', 'none'")
    assert issues["runner.ulimits"].startswith("item 1: expected a ulimit like nofile=20000:20000")
    assert issues["sever"] == "unknown key (did you mean 'server'?)"
    assert issues["secrets.GOOD.repo"] == "unknown key (did you mean 'repos'?)"
    assert "/etc/forgeci.toml: server.port: expected an integer" in str(exc.value)


def test_syntax_errors_name_line_and_column() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_settings("[server]\nport = = 1\n", "forgeci.toml")
    (issue,) = exc.value.issues
    assert issue.source == "forgeci.toml"
    assert issue.message.startswith("invalid TOML: line 2, column 8:")


def test_section_that_is_not_a_table() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_settings("server = 5\n", "f")
    assert issue_map(exc) == {"server": "expected a table, got 5"}


def test_bad_secret_names_are_reported() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_settings('[secrets]\n"bad-name" = { env = "X" }\n', "f")
    assert issue_map(exc) == {"secrets": "expected names like NPM_TOKEN, got 'bad-name'"}


def test_secrets_come_from_the_environment_only() -> None:
    s = parse_settings(
        '[secrets]\nNPM_TOKEN = { env = "FORGECI_SECRET_NPM_TOKEN", repos = ["acme/*"] }\n'
        'PYPI = { env = "FORGECI_SECRET_PYPI" }\nEMPTY = { env = "FORGECI_SECRET_EMPTY" }\n', "f")
    environ = {"FORGECI_SECRET_NPM_TOKEN": "npm-123", "FORGECI_SECRET_EMPTY": "", "NPM_TOKEN": "not this"}
    assert resolve_secrets(s, environ) == {"NPM_TOKEN": "npm-123"}
    assert resolve_secrets(s, {**environ, "FORGECI_SECRET_PYPI": "p"}, repo="other/x") == {"PYPI": "p"}
    assert resolve_secrets(s, environ, repo="acme/web") == {"NPM_TOKEN": "npm-123"}
    assert resolve_secrets(s, {}) == {}


def test_env_value() -> None:
    environ = {"SET": "v", "EMPTY": ""}
    assert env_value("SET", environ) == "v"
    assert env_value("EMPTY", environ) is None
    assert env_value("UNSET", environ) is None
    assert env_value("", {"": "x"}) is None


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, port in (("flag", 1001), ("env", 1002), ("cwd", 1003)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "forgeci.toml").write_text(f"[server]\nport = {port}\n")
    flag, env = str(tmp_path / "flag" / "forgeci.toml"), {"FORGECI_CONFIG": str(tmp_path / "env" / "forgeci.toml")}
    monkeypatch.chdir(tmp_path / "cwd")

    assert find_settings_file(flag, env) == Path(flag)
    assert load_settings(flag, env).server.port == 1001
    assert load_settings(None, env).server.port == 1002
    assert find_settings_file(None, {}) == tmp_path / "cwd" / "forgeci.toml"
    assert load_settings(None, {}).server.port == 1003
    assert load_settings(None, {"FORGECI_CONFIG": ""}).server.port == 1003

    monkeypatch.chdir(tmp_path)
    assert find_settings_file(None, {}) is None
    assert load_settings(None, {}) == Settings.default()


def test_named_file_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "forgeci.toml").write_text("")  # present, yet never a fallback for a missing named file
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="no such settings file"):
        find_settings_file(missing, {})
    with pytest.raises(ConfigError, match=r"FORGECI_CONFIG"):
        load_settings(None, {"FORGECI_CONFIG": missing})


def test_load_settings_reports_the_file_path(tmp_path: Path) -> None:
    path = tmp_path / "forgeci.toml"
    path.write_text("[queue]\nmax_retries = -1\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(str(path), {})
    assert [(i.source, i.path) for i in exc.value.issues] == [(str(path), "queue.max_retries")]


def test_timeouts_and_grace_are_durations() -> None:
    s = parse_settings('[runner]\nshutdown_grace = "2m"\n[storage]\nconnect_timeout = 5\nread_timeout = "1m30s"\n', "f")
    assert (s.runner.shutdown_grace, s.storage.connect_timeout, s.storage.read_timeout) == (120.0, 5.0, 90.0)
    assert parse_settings('[storage]\nread_timeout = "45"\n', "f").storage.read_timeout == 45.0


def test_bad_timeouts_and_grace_are_reported() -> None:
    text = '[runner]\nshutdown_grace = "0s"\n[storage]\nconnect_timeout = -1\nread_timeout = "forever"\n'
    with pytest.raises(ConfigError) as exc:
        parse_settings(text, "f")
    issues = issue_map(exc)
    assert set(issues) == {"runner.shutdown_grace", "storage.connect_timeout", "storage.read_timeout"}
    assert issues["runner.shutdown_grace"].endswith("(a duration must be positive)")
    assert issues["storage.connect_timeout"].endswith("(a duration must be positive)")
    assert issues["storage.read_timeout"] == "expected a duration like 90s, 5m or 1h30m, got 'forever'"
    with pytest.raises(ConfigError) as exc:
        parse_settings("[storage]\nread_timeout = true\nconect_timeout = 3\n", "f")
    issues = issue_map(exc)
    assert issues["storage.read_timeout"].startswith("expected a duration")
    assert issues["storage.conect_timeout"] == "unknown key (did you mean 'connect_timeout'?)"


def test_queue_url_takes_libpq_multi_host_failover_urls_and_refuses_bad_ports() -> None:
    # A primary and its standby (Patroni, pg_auto_failover): libpq tries them in turn and keeps the writable one.
    failover = "postgresql://forgeci@pg1:5432,pg2:5433/forgeci?target_session_attrs=read-write"
    assert parse_settings(f'[queue]\nurl = "{failover}"\n', "f").queue.url == failover
    socket = "postgresql://forgeci@/forgeci?host=/run/postgresql"
    assert parse_settings(f'[queue]\nurl = "{socket}"\n', "f").queue.url == socket
    for bad, says in [("postgresql://forgeci@pg1:5432,pg2:x/forgeci", "a port is a number"),
                      ("postgresql://forgeci:pw@pg1,pg2/forgeci", "must not hold a password"),
                      ("mysql://forgeci@db/forgeci", "got the scheme 'mysql'")]:
        with pytest.raises(ConfigError) as exc:
            parse_settings(f'[queue]\nurl = "{bad}"\n', "f")
        assert says in issue_map(exc)["queue.url"] and ":pw@" not in str(exc.value)
