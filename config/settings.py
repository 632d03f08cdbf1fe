"""Server settings (forgeci.toml): its schema, loading and validation, secrets, and the reference it documents."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from config.artifacts import LINK_LIFETIME, SIZE
from config.errors import ConfigError
from config.labels import LABELS
from config.notify import NOTIFY, NOTIFY_DOC, NotifyTarget
from config.schedules import SCHEDULES, SCHEDULES_DOC, ScheduleSpec
from config.quotas import QUOTAS, CostSettings, QuotaRule
from config.schema import (
    BOOL,
    DURATION,
    ENV_NAME,
    ENV_VAR,
    NONEMPTY,
    STRING,
    FieldDoc,
    Issues,
    as_text,
    choice,
    decode,
    field_docs,
    integer,
    load_toml,
    markdown_table,
    matching,
    nonempty_text,
    option,
    scalar,
    section,
    string_list,
    table_of,
    url_kind,
)

# ---------------------------------------------------------------------------
# The forgeci.toml schema. Defaults are design.md's example.
# ---------------------------------------------------------------------------

_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")
_ULIMIT = re.compile(r"[a-z]+=-?[0-9]+(:-?[0-9]+)?")
_MEMORY = re.compile(r"[0-9]+[bkmgBKMG]?")

PATH = scalar("path", lambda value: Path(os.path.expanduser(nonempty_text(value))), str)
OPTIONAL_PATH = scalar("path", lambda value: os.path.expanduser(as_text(value, "a path")))


def default_data_dir() -> Path:
    """`/var/lib/forgeci` for root (a system service), `~/.local/share/forgeci` for anyone else."""
    if os.geteuid() == 0:
        return Path("/var/lib/forgeci")
    return Path(os.path.expanduser("~/.local/share/forgeci"))


def default_ca_bundle() -> str:
    """The host's CA bundle (Debian, Fedora, Alpine paths), or "" when there is none."""
    return next((p for p in _CA_BUNDLES if os.path.isfile(p)), "")


@dataclass(frozen=True)
class ServerSettings:
    """[server]: the HTTP server (webhooks, API, dashboard)."""

    host: str = option(NONEMPTY, "address to listen on", "127.0.0.1")
    port: int = option(integer(1, 65535), "port to listen on", 8080)
    public_url: str = option(url_kind(("http", "https"), True),
                             "URL people reach the server at; links in commit statuses", "",
                             shown="`http://<host>:<port>`")
    api_token_env: str = option(ENV_VAR, "env variable with the API token; when set, mutating endpoints need it",
                                "FORGECI_API_TOKEN")
    protect_reads: bool = option(BOOL, "true: reads and the dashboard need the token too", False)
    status_context: str = option(NONEMPTY, "context name of the commit statuses forgeci posts", "forgeci/ci")
    run_drafts: bool = option(BOOL, "build draft pull requests", True)
    artifact_link_lifetime: float = option(LINK_LIFETIME, "how long the signed artifact download links of a listing "
                                                          "(API, dashboard, CLI) work; 1m to 7d", 3600.0)
    trusted_proxies: tuple[str, ...] = option(
        string_list(nonempty_text, "array of addresses or networks"),
        "reverse proxies (IPs or CIDRs) whose X-Forwarded-Proto says a request came over https (agents get "
        "secrets only over https or loopback)", ())

    def __post_init__(self) -> None:
        # Derived rather than fixed so changing the port alone keeps status links right.
        if not self.public_url:
            host = f"[{self.host}]" if ":" in self.host else self.host
            object.__setattr__(self, "public_url", f"http://{host}:{self.port}")


def _queue_url(value: object) -> str:
    """`[queue] url`: "" or postgresql://user@host[:port]/db[?options]; a password in it is refused, unechoed."""
    text = as_text(value, "a url")
    if not text:
        return ""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError("expected a postgresql://user@host/db url") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"expected a postgresql://user@host/db url, got the scheme {parts.scheme!r}")
    if parts.password is not None:
        raise ValueError("the url must not hold a password: put it in the variable queue.password_env names")
    if not parts.username or not parts.path.strip("/"):
        raise ValueError("expected a postgresql://user@host/db url naming the user and the database")
    return text


@dataclass(frozen=True)
class QueueSettings:
    """[queue]: scheduling of jobs."""

    max_concurrent: int = option(integer(1), "jobs running at the same time", 2)
    default_priority: int = option(integer(0, 10), "priority of webhook jobs; 0..10, higher runs first", 5)
    max_retries: int = option(integer(0), "automatic retries of infrastructure faults", 3)
    lease_seconds: int = option(integer(1), "seconds a runner's claim on a job lasts unless renewed", 60)
    cancel_superseded: bool = option(BOOL, "a newer push to a branch or pull request cancels its older jobs", True)
    url: str = option(scalar("queue url", _queue_url),
                      '"" = SQLite in data_dir; `postgresql://user@host/db` = PostgreSQL (see "PostgreSQL queue"; '
                      "backups there are pg_dump's)", "")
    password_env: str = option(ENV_VAR, "env variable with the PostgreSQL password (never put it in the url)",
                               "FORGECI_QUEUE_PASSWORD")


@dataclass(frozen=True)
class RunnerSettings:
    """[runner]: the containers jobs run in."""

    embedded: bool = option(BOOL, "run jobs in the server itself; false: only `forgeci agent`s run them", True)
    labels: tuple[str, ...] = option(LABELS, "labels of the embedded runner: it takes the jobs whose `runs_on` "
                                             "it has all of (and those without `runs_on`)", ())
    image: str = option(NONEMPTY, "default job image", "localhost/forgeci-job:latest")
    podman_user: str = option(NONEMPTY, "when started as root, Podman runs as this user (rootless)", "forgeci")
    podman_url: str = option(STRING, 'an existing Podman API socket; "" = forgeci starts its own', "")
    podman_service: str = option(choice("shared", "private"),
                                 '"shared": one `podman system service` per Podman user that outlives a run (it '
                                 'stops after `podman_idle` unused); "private": one per forgeci process, stopped '
                                 'with it', "shared")
    podman_idle: float = option(DURATION, "how long the shared Podman service stays up after its last request", 600.0)
    warm_pool: int = option(integer(0), "containers of the default image `forgeci serve` starts ahead of demand, "
                                        "one job each (jobs of another image or with services start their own)", 0)
    podman_service_dir: str = option(OPTIONAL_PATH, 'folder of the shared service\'s socket, lock and pid file; "" '
                                                    '= `forgeci` in the Podman user\'s runtime dir', "")
    network: str = option(choice("slirp4netns", "pasta", "none"), "container network", "slirp4netns")
    memory: str = option(scalar("size", matching(_MEMORY, "a size like 512m or 4g")),
                         "memory limit per job container", "4g")
    pids_limit: int = option(integer(1), "process limit per job container", 4096)
    ulimits: tuple[str, ...] = option(
        string_list(matching(_ULIMIT, "a ulimit like nofile=20000:20000"), "array of ulimits"),
        "ulimits of job containers (`name=soft:hard`)", ("nofile=20000:20000", "nproc=4096:4096"))
    step_timeout: float = option(DURATION, "default limit per step", 300.0)
    job_timeout: float = option(DURATION, "default limit per job", 3600.0)
    shutdown_grace: float = option(DURATION, "how long a stopping server lets running jobs finish before it stops "
                                             "them and puts them back in the queue", 30.0)
    ca_bundle: str = option(OPTIONAL_PATH, 'host trust store mounted into jobs; "" = off', factory=default_ca_bundle,
                            shown="`/etc/ssl/certs/ca-certificates.crt` when it exists, else `\"\"`")
    max_log_bytes: int = option(integer(0), "bytes of step output (as stored) kept in a job's log per attempt; the "
                                             "rest is dropped with a marker line and counted in /metrics; 0 = no limit",
                                64 * 1024 * 1024, shown="`67108864` (64 MiB)")
    max_artifact_size: int = option(SIZE, "the most a job's artifacts may hold (the files, before compression); "
                                          "over it they are not kept", 1 << 30)


@dataclass(frozen=True)
class StorageSettings:
    """[storage]: the object store for caches, snapshots and logs."""

    url: str = option(url_kind(("file", "s3"), True),
                      '"" = `file://<data_dir>/store`; or `s3://BUCKET?endpoint=http://HOST:9000&secure=false`', "")
    access_key_env: str = option(ENV_VAR, "env variable with the S3 access key", "FORGECI_S3_ACCESS_KEY")
    secret_key_env: str = option(ENV_VAR, "env variable with the S3 secret key", "FORGECI_S3_SECRET_KEY")
    # Per request, not per operation: a failed request is retried (a few times, with backoff) before the store
    # counts as unavailable, so an operation on a silent store takes a small multiple of read_timeout.
    connect_timeout: float = option(DURATION, "S3: how long to wait for a connection to the store", 3.0)
    read_timeout: float = option(DURATION, "S3: how long a request waits for the store's answer before it fails "
                                           "(and is retried)", 30.0)


@dataclass(frozen=True)
class RetentionSettings:
    """[retention]: what the hourly maintenance prunes."""

    snapshot_days: int = option(integer(1), "keep workspace snapshots this many days", 7)
    cache_days: int = option(integer(1), "keep caches unused for this many days", 30)
    job_days: int = option(integer(1), "keep finished jobs and their logs this many days", 7)
    artifact_days: int = option(integer(1), "keep artifacts this many days, unless their `expire` says otherwise; "
                                            "a pipeline stays while it has unexpired artifacts", 7)
    image_days: int = option(integer(1), "remove job images forgeci built from a repository's Containerfile (and "
                                         "their exports in the store) after this many days without use", 14)
    cache_bytes_per_repo: int = option(SIZE, "the most a repository's caches may hold; past it, the entries "
                                             "restored least recently are evicted (never the one just saved)",
                                       10 << 30)


@dataclass(frozen=True)
class SecretSpec:
    """One [secrets] entry: where the value lives and which repositories may use it."""

    env: str = option(scalar("env variable name", matching(ENV_NAME, "an environment variable name")),
                      "env variable of the server holding the value")
    repos: tuple[str, ...] = option(string_list(nonempty_text, "array of globs"),
                                    "repositories (`owner/name` globs) allowed to use it; empty = all", ())

    def allows(self, repo: str) -> bool:
        """Whether repository `owner/name` may receive this secret."""
        return not self.repos or any(fnmatch.fnmatchcase(repo, pattern) for pattern in self.repos)


@dataclass(frozen=True)
class GitSettings:
    """[git]: cloning."""

    token_env: str = option(ENV_VAR, "env variable with a token for cloning private repositories over https",
                            "FORGECI_GIT_TOKEN")


@dataclass(frozen=True)
class GitHubSettings:
    """[github]: GitHub and GitHub Enterprise."""

    api_url: str = option(url_kind(("http", "https")),
                          "API root; GitHub Enterprise: `https://HOST/api/v3`", "https://api.github.com")
    webhook_secret_env: str = option(ENV_VAR, "env variable with the webhook secret", "FORGECI_GITHUB_WEBHOOK_SECRET")
    token_env: str = option(ENV_VAR, "env variable with the token (when not a GitHub App)", "FORGECI_GITHUB_TOKEN")
    app_id: int = option(integer(0), "the GitHub App's id; 0 = not an App", 0)
    private_key_path: str = option(OPTIONAL_PATH, "the GitHub App's PEM key", "")


@dataclass(frozen=True)
class GiteaSettings:
    """[gitea]: Gitea and Forgejo."""

    api_url: str = option(url_kind(("http", "https"), True), "API root, e.g. `https://HOST/api/v1`", "")
    webhook_secret_env: str = option(ENV_VAR, "env variable with the webhook secret", "FORGECI_GITEA_WEBHOOK_SECRET")
    token_env: str = option(ENV_VAR, "env variable with the token", "FORGECI_GITEA_TOKEN")


@dataclass(frozen=True)
class GitLabSettings:
    """[gitlab]: GitLab."""

    api_url: str = option(url_kind(("http", "https"), True), "API root, e.g. `https://HOST/api/v4`", "")
    webhook_secret_env: str = option(ENV_VAR, "env variable with the webhook secret", "FORGECI_GITLAB_WEBHOOK_SECRET")
    token_env: str = option(ENV_VAR, "env variable with the token", "FORGECI_GITLAB_TOKEN")


@dataclass(frozen=True)
class Settings:
    """The whole forgeci.toml."""

    data_dir: Path = option(PATH, "queue database, logs, workspaces, local store", factory=default_data_dir,
                            shown="`~/.local/share/forgeci`; root: `/var/lib/forgeci`")
    server: ServerSettings = option(section(ServerSettings), ServerSettings.__doc__ or "", factory=ServerSettings)
    queue: QueueSettings = option(section(QueueSettings), QueueSettings.__doc__ or "", factory=QueueSettings)
    runner: RunnerSettings = option(section(RunnerSettings), RunnerSettings.__doc__ or "", factory=RunnerSettings)
    storage: StorageSettings = option(section(StorageSettings), StorageSettings.__doc__ or "", factory=StorageSettings)
    retention: RetentionSettings = option(section(RetentionSettings), RetentionSettings.__doc__ or "",
                                          factory=RetentionSettings)
    secrets: Mapping[str, SecretSpec] = option(table_of(SecretSpec),
                                               "[secrets]: named secrets, each read from an env variable of the server; masked in every log",
                                               factory=dict)
    git: GitSettings = option(section(GitSettings), GitSettings.__doc__ or "", factory=GitSettings)
    github: GitHubSettings = option(section(GitHubSettings), GitHubSettings.__doc__ or "", factory=GitHubSettings)
    gitea: GiteaSettings = option(section(GiteaSettings), GiteaSettings.__doc__ or "", factory=GiteaSettings)
    gitlab: GitLabSettings = option(section(GitLabSettings), GitLabSettings.__doc__ or "", factory=GitLabSettings)
    notify: tuple[NotifyTarget, ...] = option(NOTIFY, NOTIFY_DOC, (), shown="`[]`")
    schedules: tuple[ScheduleSpec, ...] = option(SCHEDULES, SCHEDULES_DOC, ())
    quotas: tuple[QuotaRule, ...] = option(
        QUOTAS, "[[quotas]]: limits per owner/repository; the first rule whose `match` fits a repository applies", (),
        shown="none")
    costs: CostSettings = option(section(CostSettings), CostSettings.__doc__ or "", factory=CostSettings)

    @classmethod
    def default(cls) -> Settings:
        """The built-in settings used when there is no forgeci.toml."""
        return cls()

    @property
    def store_url(self) -> str:
        """storage.url, or the local store under data_dir when it is empty."""
        return self.storage.url or "file://" + os.path.abspath(self.data_dir / "store")


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

def find_settings_file(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    """The settings file to use: `--config`, then `$FORGECI_CONFIG`, then `./forgeci.toml`, else None.

    A path the user named (flag or variable) that does not exist is a ConfigError, not a silent default.
    """
    for named, origin in ((explicit, "--config"), (environ.get("FORGECI_CONFIG"), "$FORGECI_CONFIG")):
        if named:
            path = Path(os.path.expanduser(named))
            if not path.is_file():
                raise ConfigError(f"no such settings file (named by {origin})", str(path))
            return path
    local = Path.cwd() / "forgeci.toml"
    return local if local.is_file() else None


def parse_settings(data: bytes | str, source: str) -> Settings:
    """Settings from the bytes of a forgeci.toml; every problem is reported in one ConfigError."""
    issues = Issues(source)
    settings: Settings = decode(Settings, load_toml(data, source), "", issues)
    issues.raise_if_any()
    return settings


def load_settings(explicit: str | None = None, environ: Mapping[str, str] = os.environ) -> Settings:
    """The settings from the file find_settings_file picks, or the defaults when there is none."""
    path = find_settings_file(explicit, environ)
    if path is None:
        return Settings.default()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", str(path)) from None
    return parse_settings(data, str(path))


def env_value(name: str, environ: Mapping[str, str]) -> str | None:
    """The value of environment variable `name`; None when the name is "" or the variable unset or empty."""
    return (environ.get(name) or None) if name else None


def resolve_secrets(settings: Settings, environ: Mapping[str, str], repo: str | None = None) -> dict[str, str]:
    """Secret name -> value for every [secrets] entry whose variable is set (and, given `repo`, allowed)."""
    return {
        name: value
        for name, spec in settings.secrets.items()
        if (repo is None or spec.allows(repo)) and (value := env_value(spec.env, environ)) is not None
    }


def settings_reference() -> list[FieldDoc]:
    """Every forgeci.toml key, for the README and `forgeci config check`."""
    return field_docs(Settings)


def reference_markdown() -> str:
    """The forgeci.toml part of the README's configuration reference: one table per section."""
    docs = settings_reference()
    tables = ("table", "table of tables", "array of tables")
    top = [d for d in docs if "." not in d.path and d.type not in tables]
    parts = [markdown_table(top)]
    for d in docs:
        if d.type in tables:
            inner = [c for c in docs if c.path.startswith((d.path + ".", d.path + "[]."))]
            about = d.doc.split(": ", 1)[-1]
            heading = f"[[{d.path}]]" if d.type == "array of tables" else f"[{d.path}]"
            parts.append(f"#### `{heading}`\n\n{about[:1].upper()}{about[1:]}\n\n{markdown_table(inner)}")
    return "\n\n".join(parts)
