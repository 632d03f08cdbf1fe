"""systemd units for `forgeci serve` and `forgeci agent`, with only the hardening that rootless Podman survives."""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from config.errors import ConfigError

DEFAULT_DIR = Path("/etc/systemd/system")
DEFAULT_CONFIG = Path("/etc/forgeci/forgeci.toml")
DEFAULT_ENV_FILE = Path("/etc/forgeci/forgeci.env")
STOP_MARGIN = 60  # seconds past runner.shutdown_grace for requeueing, removing containers, stopping Podman

# Hardening a unit keeps. None of them adds a user, PID or network namespace, a seccomp filter, a device policy or a
# capability limit, which Podman's processes would inherit. ProtectSystem=full makes /usr, /boot, /efi and /etc
# read-only for the server; the Podman user cannot write there anyway, so Podman (which may run inside this mount
# namespace, or join its pause process's own) is unaffected.
KEPT: tuple[tuple[str, str], ...] = (
    ("ProtectSystem", "full"),
)

# What was left out, and why: README.md lists the same (a test keeps the two in step).
LEFT_OUT: dict[str, str] = {
    "NoNewPrivileges": "rootless Podman maps ids with the setuid newuidmap/newgidmap, which no_new_privs disarms",
    "RestrictNamespaces": "every container is a set of new user, mount, PID, network, UTS and IPC namespaces",
    "PrivateUsers": "a user namespace for the service leaves newuidmap nothing to map from /etc/subuid",
    "SystemCallFilter": "the filter is inherited by Podman and every container: unshare, mount, setns, keyctl and "
                        "whatever a job's build calls would fail",
    "CapabilityBoundingSet": "the set is inherited by setuid newuidmap/newgidmap (they need CAP_SETUID/CAP_SETGID) and "
                             "by runuser; a wrong set shows only when the first job starts",
    "PrivateDevices": "hides /dev/fuse and /dev/net/tun (fuse-overlayfs storage, slirp4netns networking)",
    "DeviceAllow": "any entry turns on a device policy that blocks /dev/fuse and /dev/net/tun",
    "ProtectKernelTunables": "a read-only /proc/sys stops every container from mounting its own /proc "
                             "(\"mount proc: operation not permitted\")",
    "ProtectProc": "a restricted /proc stops containers from mounting their own /proc, as above",
    "ProcSubset": "as ProtectProc",
    "ProtectControlGroups": "on cgroup v2 hosts with delegation Podman creates the cgroups that enforce "
                            "runner.memory and runner.pids_limit",
    "ProtectHome": "the Podman user's image storage and configuration live in its home (~/.local/share/containers)",
    "PrivateTmp": "rootless Podman keeps one pause process per user whose mount namespace every later Podman "
                  "command joins: a private /tmp would be ignored by containers, or be inherited by every "
                  "podman command of the user and vanish with the service",
    "ProtectHostname": "its seccomp filter blocks sethostname, which the runtime calls for each container",
    "ProtectKernelModules": "its seccomp filter and mount changes are inherited by every container",
    "ProtectKernelLogs": "its device policy and seccomp filter are inherited by every container",
    "ProtectClock": "implies a device policy (DeviceAllow=char-rtc) that blocks /dev/fuse and /dev/net/tun",
    "RestrictAddressFamilies": "inherited by containers: runc and slirp4netns need netlink, jobs need any family",
    "RestrictSUIDSGID": "inherited by containers: builds that install setuid programs (apt, sudo) fail",
    "MemoryDenyWriteExecute": "inherited by containers: JITs in jobs (Node, Bun, the JVM) cannot run",
    "LockPersonality": "inherited by containers: 32-bit and emulated builds (setarch, linux32) fail",
    "RestrictRealtime": "inherited by containers: jobs may not ask for realtime scheduling",
    "PrivateNetwork": "the server answers webhooks and jobs reach their forges",
    "ProtectSystem=strict": "the whole tree read-only but for listed paths: Podman writes under the user's home, "
                            "/run/user/UID, /var/tmp and the data dir, and the list rots as Podman changes",
}


@dataclass(frozen=True)
class UnitOptions:
    """What a unit needs to know: who runs forgeci, with which settings file, from which executable."""

    config: Path = DEFAULT_CONFIG
    data_dir: Path = Path("/var/lib/forgeci")
    user: str = "root"
    group: str | None = None
    executable: tuple[str, ...] = ()  # the forgeci command; () = the one next to this Python (or python -m)
    env_file: Path = DEFAULT_ENV_FILE
    environment: Mapping[str, str] = field(default_factory=dict)
    shutdown_grace: float = 30.0
    server: str | Sequence[str] = ""  # the agent's server URL (several: coordinators of one queue, tried in turn)
    agent_args: tuple[str, ...] = ()  # more `forgeci agent` options: --labels L,L, --name N, --max-concurrent N

    def command(self) -> tuple[str, ...]:
        return self.executable or default_executable()


def default_executable() -> tuple[str, ...]:
    """The `forgeci` script of the environment this code runs from (a venv's bin/), else `python -m forgeci_cli`."""
    script = Path(sys.executable).with_name("forgeci")
    if script.is_file() and os.access(script, os.X_OK):
        return (str(script),)
    found = shutil.which("forgeci")
    return (found,) if found else (sys.executable, "-m", "forgeci_cli")


_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


def quote(word: str, *, command: bool = False) -> str:
    """One word of a systemd assignment (or, with `command`, of ExecStart=): as is when plain, else double-quoted.

    `%` starts a specifier everywhere and `$` a variable only on command lines, so each is doubled where it
    would be expanded.
    """
    escaped = word.replace("%", "%%")
    if command:
        escaped = escaped.replace("$", "$$")
    if _PLAIN.fullmatch(word):
        return escaped
    escaped = escaped.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _service(opts: UnitOptions, description: str, argv: Sequence[str], after: Sequence[str]) -> str:
    group = opts.group or opts.user
    lines = [
        "# Written by `forgeci service install`; re-run it to regenerate (review with --dir DIR).",
        f"# Settings: {opts.config}; data dir: {opts.data_dir} (data_dir in the settings).",
        "# Secrets (API token, webhook secrets, forge and S3 tokens) go in the environment file, mode 0600.",
        "[Unit]",
        f"Description={description}",
        f"After={' '.join(after)}",
        "Wants=network-online.target",
        # A server that crashes at once (bad settings, a database newer than the code) stops being restarted.
        "StartLimitIntervalSec=300",
        "StartLimitBurst=5",
        "",
        "[Service]",
        "Type=exec",
        f"User={opts.user}",
        f"Group={group}",
        f"Environment={quote('FORGECI_CONFIG=' + str(opts.config))}",
        *(f"Environment={quote(f'{k}={v}')}" for k, v in sorted(opts.environment.items())),
        f"EnvironmentFile=-{opts.env_file}",
        f"WorkingDirectory=-{opts.data_dir}",
        "ExecStart=" + " ".join(quote(word, command=True) for word in argv),
        "Restart=on-failure",
        "RestartSec=5s",
        # SIGTERM to forgeci alone: it lets running jobs finish (runner.shutdown_grace), requeues the rest and stops
        # its Podman service; only what is left at the timeout gets SIGKILL.
        "KillMode=mixed",
        f"TimeoutStopSec={math.ceil(opts.shutdown_grace) + STOP_MARGIN}s",
        *(f"{key}={value}" for key, value in KEPT),
        "# Left out, as they break rootless Podman or the server (README.md, Running it as a service): "
        + ", ".join(k for k in LEFT_OUT if "=" not in k) + ".",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def serve_unit(opts: UnitOptions) -> str:
    """forgeci.service: webhooks, API, dashboard and the embedded runner."""
    argv = [*opts.command(), "serve", "--config", str(opts.config)]
    return _service(opts, "forgeci CI server (webhooks, API, dashboard, runner)", argv, ["network-online.target"])


def agent_unit(opts: UnitOptions) -> str:
    """forgeci-agent.service: a runner on another host, claiming jobs from `opts.server` (or the first of its
    servers that answers)."""
    servers = [opts.server] if isinstance(opts.server, str) else list(opts.server)
    for server in servers or [""]:
        if not server.startswith(("http://", "https://")):
            raise ConfigError(f"the agent needs --server URL (http:// or https://), got {server!r}")
    argv = [*opts.command(), "agent", *(word for server in servers for word in ("--server", server)),
            "--config", str(opts.config), *opts.agent_args]
    return _service(opts, f"forgeci agent (runs jobs of {', '.join(servers)})", argv, ["network-online.target"])


def install_units(opts: UnitOptions, directory: Path = DEFAULT_DIR, *, agent: bool = False) -> list[Path]:
    """Write forgeci.service (or, with `agent`, forgeci-agent.service) into `directory`; the paths written."""
    units = {"forgeci-agent.service": agent_unit(opts)} if agent else {"forgeci.service": serve_unit(opts)}
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in units.items():
        path = directory / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        os.replace(tmp, path)
        written.append(path)
    return written


def next_steps(paths: Sequence[Path], opts: UnitOptions, directory: Path) -> str:
    """What the operator does after the units are written."""
    names = " ".join(p.stem for p in paths)
    lines = []
    if directory != DEFAULT_DIR:
        lines.append(f"to install: cp {' '.join(str(p) for p in paths)} {DEFAULT_DIR}/")
    lines += [f"secrets: {opts.env_file} (mode 0600), e.g. FORGECI_API_TOKEN=... FORGECI_GITHUB_WEBHOOK_SECRET=...",
              f"check the host: forgeci doctor --config {opts.config} --env-file {opts.env_file}",
              f"start: systemctl daemon-reload && systemctl enable --now {names}",
              f"logs: journalctl -u {paths[0].stem} -f"]
    return "\n".join(lines)


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of a systemd EnvironmentFile (`KEY=VALUE` lines, `#` comments, optional quotes), so that
    `forgeci doctor --env-file` sees what the service will."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the environment file: {exc.strerror or exc}", str(path)) from None
    found: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(f"line {number}: expected KEY=VALUE", str(path))
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[key] = value
    return found


def add_unit_options(p: argparse.ArgumentParser, positive_int: Callable[[str], int]) -> None:
    """`service install --agent`'s options that the agent's command line carries."""
    p.add_argument("--labels", metavar="L,L", help="the agent's labels (forgeci agent --labels)")
    p.add_argument("--name", help="the agent's name (forgeci agent --name; default: the host name)")
    p.add_argument("--max-concurrent", type=positive_int, default=None, help="the agent's jobs at once")


def unit_args(args: argparse.Namespace) -> tuple[str, ...]:
    """service install --agent's --labels, --name and --max-concurrent, checked, for the unit's command line."""
    from config.labels import parse_labels
    from runner.queue.agents import check_name

    out: list[str] = []
    if args.labels:
        out += ["--labels", ",".join(parse_labels(args.labels))]
    if args.name:
        out += ["--name", check_name(args.name, "--name")]
    if args.max_concurrent:
        out += ["--max-concurrent", str(args.max_concurrent)]
    if out and not args.agent:
        raise ConfigError("--labels, --name and --max-concurrent are options of the agent's unit: add --agent")
    return tuple(out)
