"""`forgeci doctor`: checks a host before its first job does — Podman, the user, storage, the store, the forges."""

from __future__ import annotations

import enum
import io
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.settings import Settings, env_value
from runner.errors import RunnerError
from runner.layout import DataLayout
from runner.podman_cli import podman_cli
from runner.podman_user import PodmanUser

MIN_PODMAN = (4, 0)
MIN_SUBIDS = 65536  # a whole 16-bit uid space: images with files owned by uid 65534 (nobody) need it
FREE_FAIL = 1 << 30  # bytes free in the data dir below which a job is likely to fail (1 GiB)
FREE_WARN = 10 << 30  # below this, caches, snapshots and workspaces soon fill it (10 GiB)
SETUP = "scripts/setup"


class Status(enum.Enum):
    ok = "ok"
    warn = "warn"
    fail = "fail"


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, what was found, and what to do when it is not ok."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status.value:<4}  {self.name}: {self.detail}"
        return f"{text}\n      -> {self.fix}" if self.fix and self.status is not Status.ok else text


def ok(name: str, detail: str) -> Check:
    return Check(name, Status.ok, detail)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.warn, detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.fail, detail, fix)


@dataclass(frozen=True)
class Host:
    """Where the host's facts are read from (tests point these at files of their own)."""

    subuid: Path = Path("/etc/subuid")
    subgid: Path = Path("/etc/subgid")
    tun: Path = Path("/dev/net/tun")
    mountinfo: Path = Path("/proc/self/mountinfo")
    euid: int = field(default_factory=os.geteuid)


@dataclass
class Context:
    """What the checks share: settings, environment, the Podman user and `podman info` once known."""

    settings: Settings
    environ: Mapping[str, str]
    host: Host
    user: PodmanUser | None = None
    podman_runs: bool = False  # `podman --version` worked as the user
    info: dict[str, Any] | None = None


def run_doctor(settings: Settings, environ: Mapping[str, str], host: Host | None = None) -> list[Check]:
    """Every check, in the order an operator fixes things; a check that needs an earlier one's result is left
    out when that failed (one cause, one failing line)."""
    from runner.doctor_forges import forge_checks

    ctx = Context(settings, environ, host or Host())
    checks: list[Check] = []
    for step in (check_podman_user, check_podman, check_podman_info, check_runtime, check_limits, check_storage,
                 check_subids, check_tun, check_image, check_data_dir, check_database, check_store, check_server):
        checks.extend(step(ctx))
    checks.extend(forge_checks(settings, environ))
    return checks


def exit_code(checks: Iterable[Check]) -> int:
    """0 when nothing failed (warnings are fine), else 1."""
    return 1 if any(check.status is Status.fail for check in checks) else 0


# -- Podman ----------------------------------------------------------------------------------------------------


def check_podman_user(ctx: Context) -> list[Check]:
    try:
        ctx.user = PodmanUser.resolve(ctx.settings.runner.podman_user)
    except RunnerError as exc:
        return [fail("podman user", str(exc), f"run {SETUP} as root: it creates {ctx.settings.runner.podman_user} "
                                              f"with subuid/subgid ranges")]
    user = ctx.user
    how = f"root delegates to {user.name}" if user.switch else "this user runs Podman itself"
    return [ok("podman user", f"{user.name} (uid {user.uid}), rootless; {how}")]


def _podman(ctx: Context, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    assert ctx.user is not None
    return podman_cli(ctx.user, args, check=False, timeout=timeout)


def check_podman(ctx: Context) -> list[Check]:
    if not shutil.which("podman"):
        return [fail("podman", "not installed", f"run {SETUP} (apt-get install podman runc uidmap slirp4netns "
                                                f"fuse-overlayfs catatonit)")]
    if ctx.user is None:
        return []
    try:
        result = _podman(ctx, ["--version"])
    except (OSError, subprocess.SubprocessError) as exc:
        return [fail("podman", f"cannot run podman as {ctx.user.name}: {exc}", f"run {SETUP}")]
    text = result.stdout.decode(errors="replace").strip()
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if result.returncode != 0 or not match:
        return [fail("podman", f"`podman --version` as {ctx.user.name} failed: {_tail(result)}", f"run {SETUP}")]
    if (int(match[1]), int(match[2])) < MIN_PODMAN:
        return [fail("podman", f"{text}: forgeci needs Podman >= {MIN_PODMAN[0]}.{MIN_PODMAN[1]}",
                     "install a newer podman (Debian 12 has 4.3)")]
    ctx.podman_runs = True
    return [ok("podman", text)]


def check_podman_info(ctx: Context) -> list[Check]:
    if ctx.user is None or not ctx.podman_runs:
        return []
    try:
        result = _podman(ctx, ["info", "--format", "json"])
        info = json.loads(result.stdout) if result.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        info, result = None, None
        detail = str(exc)
    else:
        detail = _tail(result)
    if not isinstance(info, dict):
        return [fail("podman info", f"`podman info` as {ctx.user.name} failed: {detail}",
                     f"run {SETUP}; then try `podman info` as {ctx.user.name} to see the cause")]
    ctx.info = info
    rootless = _get(info, "host", "security", "rootless")
    if rootless is False:
        return [fail("podman info", f"Podman runs rootful as {ctx.user.name}", "forgeci runs jobs rootless only: "
                                                                               "set runner.podman_user to an "
                                                                               "unprivileged account")]
    return []


def cgroup_layout(mountinfo: Path) -> str:
    """"v2" (unified), "hybrid" (v1 controllers plus a cgroup2 mount, as on Debian 12 VMs here) or "v1"."""
    try:
        text = mountinfo.read_text()
    except OSError:
        return "v1"
    mounts = [(parts[4], line.split(" - ", 1)[1].split()[0]) for line in text.splitlines()
              if len(parts := line.split()) > 4 and " - " in line]
    if any(point == "/sys/fs/cgroup" and fstype == "cgroup2" for point, fstype in mounts):
        return "v2"
    has_v2 = any(fstype == "cgroup2" for _, fstype in mounts)
    return "hybrid" if has_v2 else "v1"


def check_runtime(ctx: Context) -> list[Check]:
    if ctx.info is None:
        return []
    runtime = str(_get(ctx.info, "host", "ociRuntime", "name") or "?")
    version = str(_get(ctx.info, "host", "ociRuntime", "version") or "").split("\n")[0]
    layout = cgroup_layout(ctx.host.mountinfo)
    found = f"{runtime} ({version.strip() or 'version ?'}) on cgroup {layout}"
    if runtime == "crun" and layout == "hybrid":
        return [fail("runtime", f"{found}: crun refuses hybrid cgroups (\"drop all controllers from cgroupv2\")",
                     'set runtime = "runc" under [engine] in containers.conf (scripts/setup writes it)')]
    if runtime not in ("runc", "crun"):
        return [warn("runtime", f"{found}: forgeci is tested with runc and crun", "install runc and set "
                                                                                 'runtime = "runc" in containers.conf')]
    return [ok("runtime", found)]


def check_limits(ctx: Context) -> list[Check]:
    if ctx.info is None:
        return []
    version = str(_get(ctx.info, "host", "cgroupVersion") or "")
    if version == "v2":
        return [ok("resource limits", "cgroup v2: runner.memory and runner.pids_limit apply (with delegation)")]
    return [warn("resource limits", f"cgroup {version or '?'}: rootless Podman ignores runner.memory and "
                                    "runner.pids_limit here (step and job timeouts still apply)",
                 "to enforce them, run on a cgroup v2 host with delegation (systemd.unified_cgroup_hierarchy=1)")]


def check_storage(ctx: Context) -> list[Check]:
    if ctx.info is None:
        return []
    driver = str(_get(ctx.info, "store", "graphDriverName") or "?")
    if driver == "vfs":
        return [warn("storage driver", "vfs: every container copies its whole image (20-40 s each)",
                     f'write [storage] driver = "overlay" to ~{ctx.user.name if ctx.user else ""}/.config/'
                     f"containers/storage.conf and `podman system reset` (scripts/setup does both)")]
    return [ok("storage driver", driver)]


def read_subids(path: Path, user: PodmanUser) -> int:
    """How many subordinate ids `path` (/etc/subuid or /etc/subgid) gives the user, by name or uid."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    total = 0
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in (user.name, str(user.uid)) and parts[2].isdigit():
            total += int(parts[2])
    return total


def check_subids(ctx: Context) -> list[Check]:
    if ctx.user is None:
        return []
    name = ctx.user.name
    checks = []
    for label, path, flag in (("subuid", ctx.host.subuid, "--add-subuids"), ("subgid", ctx.host.subgid,
                                                                               "--add-subgids")):
        count = read_subids(path, ctx.user)
        fix = f"usermod {flag} 200000-265535 {name} (scripts/setup does it), then `podman system migrate` as {name}"
        if count == 0:
            checks.append(fail(label, f"{path} gives {name} no range: rootless Podman cannot map image uids", fix))
        elif count < MIN_SUBIDS:
            checks.append(warn(label, f"{path} gives {name} only {count} ids: images with files of higher uids "
                                      "fail to unpack", fix))
        else:
            checks.append(ok(label, f"{count} ids for {name} in {path}"))
    return checks


def check_tun(ctx: Context) -> list[Check]:
    network = ctx.settings.runner.network
    if network == "none":
        return [ok("/dev/net/tun", "not needed (runner.network = none)")]
    path = ctx.host.tun
    try:
        st = path.stat()
    except OSError:
        return [fail("/dev/net/tun", f"{path} is missing: {network} cannot give jobs a network",
                     "modprobe tun (or set runner.network = \"none\")")]
    user = ctx.user
    usable = stat.S_ISCHR(st.st_mode) and (
        st.st_mode & 0o006 == 0o006
        or (user is not None and st.st_uid == user.uid and st.st_mode & 0o600 == 0o600)
        or (user is not None and st.st_gid == user.gid and st.st_mode & 0o060 == 0o060))
    if not usable:
        return [fail("/dev/net/tun", f"{path} (mode {stat.filemode(st.st_mode)}) is not usable by "
                                     f"{user.name if user else 'the Podman user'}: {network} fails",
                     f"chmod 666 {path} (scripts/setup does it)")]
    return [ok("/dev/net/tun", f"usable by {user.name if user else 'the Podman user'} ({network})")]


def check_image(ctx: Context) -> list[Check]:
    if ctx.info is None or ctx.user is None:
        return []
    image = ctx.settings.runner.image
    result = _podman(ctx, ["image", "exists", image])
    if result.returncode == 0:
        return [ok("job image", f"{image} is in {ctx.user.name}'s image storage")]
    build = "forgeci image build" + ("" if image == "localhost/forgeci-job:latest" else f" --tag {image}")
    return [fail("job image", f"{image} is not in {ctx.user.name}'s image storage: every job would fail",
                 f"{build} (or `podman pull {image}` as {ctx.user.name}), or point runner.image at an image "
                 "that exists")]


# -- data dir, queue, store, server --------------------------------------------------------------------------------


def check_data_dir(ctx: Context) -> list[Check]:
    layout = DataLayout(ctx.settings.data_dir)
    root = layout.root
    checks = []
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not root.exists():
        checks.append(warn("data dir", f"{root} does not exist yet", f"forgeci serve creates it; {SETUP} makes it "
                                                                     "with the owners it needs"))
    else:
        checks.append(_owners(ctx, layout))
    try:
        free = shutil.disk_usage(existing).free
    except OSError as exc:
        return [*checks, fail("free space", f"cannot read {existing}: {exc.strerror}", "check the mount")]
    found = f"{free / (1 << 30):.1f} GiB free on {existing}"
    if free < FREE_FAIL:
        checks.append(fail("free space", found, "free space there, or move data_dir to a larger disk "
                                                "(forgeci maintenance prunes old snapshots and caches)"))
    elif free < FREE_WARN:
        checks.append(warn("free space", found, "workspaces, caches and snapshots need room: 10 GiB or more"))
    else:
        checks.append(ok("free space", found))
    return checks


def _owners(ctx: Context, layout: DataLayout) -> Check:
    """The data dir must be ours; what jobs touch (workspaces, mirrors, podman) must be the Podman user's."""
    root = layout.root
    if not os.access(root, os.W_OK | os.X_OK):
        return fail("data dir", f"{root} is not writable by uid {ctx.host.euid}",
                    f"chown {ctx.host.euid} {root}, or set data_dir to a folder of this user")
    user = ctx.user
    if user is None:
        return ok("data dir", str(root))
    wrong = [p for p in (layout.workspaces, layout.mirrors, layout.podman) if p.exists() and p.stat().st_uid != user.uid]
    if wrong:
        names = " ".join(str(p) for p in wrong)
        return fail("data dir", f"not owned by {user.name}: {names}", f"chown -R {user.name}: {names} "
                                                                      f"({SETUP} makes them so)")
    if user.switch and root.stat().st_mode & 0o001 == 0:
        return fail("data dir", f"{root} is not traversable by {user.name}: jobs cannot reach their workspaces",
                    f"chmod o+x {root}")
    return ok("data dir", f"{root} (owner {_owner(root)}; job folders owned by {user.name})")


def _owner(path: Path) -> str:
    import pwd

    uid = path.stat().st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def check_database(ctx: Context) -> list[Check]:
    from runner.backup import schema_version_of
    from runner.queue import MIGRATIONS

    if ctx.settings.queue.url:
        from runner.backend import check_postgres

        level, detail, fix = check_postgres(ctx.settings, ctx.environ)
        return [{"ok": ok, "warn": warn, "fail": fail}[level]("queue database", detail, *([fix] if fix else []))]
    db = DataLayout(ctx.settings.data_dir).db
    if not db.exists():
        return [ok("queue database", f"{db} not created yet (forgeci serve creates it)")]
    # From the file's header: opening it as a database would create -wal/-shm files owned by whoever runs this.
    version = schema_version_of(db)
    known = len(MIGRATIONS)
    if version is None:
        return [fail("queue database", f"{db} is not an SQLite database", "restore the last backup: "
                                                                          "forgeci db restore FILE")]
    if version > known:
        return [fail("queue database", f"schema version {version}, newer than this forgeci ({known})",
                     "run the forgeci that wrote it, or restore a backup taken before the upgrade")]
    if version < known:
        return [warn("queue database", f"schema version {version}; this forgeci has {known}",
                     "forgeci db migrate (keeps a copy; forgeci serve would migrate at start)")]
    return [ok("queue database", f"{db}: schema version {version}")]


def check_store(ctx: Context) -> list[Check]:
    """A small put, get and delete: the store answers, takes writes and returns what it was given."""
    from config.errors import ConfigError
    from runner.store import StoreError, open_store

    settings = ctx.settings
    key = f"doctor/{socket.gethostname()}-{uuid.uuid4().hex[:12]}"
    payload = f"forgeci doctor {uuid.uuid4().hex}\n".encode()
    fix = ("check storage.url, that the store is running and reachable from here, and its keys "
           f"(${settings.storage.access_key_env}, ${settings.storage.secret_key_env})")
    url = settings.store_url
    if url.startswith("file://") and not Path(url[len("file://"):]).exists():
        # Opening a file store creates its folder: leave that to forgeci serve (and its owners to scripts/setup).
        parent = Path(url[len("file://"):]).parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not os.access(parent, os.W_OK | os.X_OK):
            return [fail("store", f"{url} does not exist and {parent} is not writable by uid {ctx.host.euid}",
                         f"create it, or point storage.url at a folder this user may write ({SETUP})")]
        return [ok("store", f"{url} not created yet (forgeci serve creates it)")]
    try:
        store = open_store(settings, ctx.environ)
    except (ConfigError, StoreError) as exc:
        return [fail("store", str(exc), fix)]
    try:
        store.put_stream(key, io.BytesIO(payload))
        with store.get_stream(key) as stream:
            back = stream.read()
        store.delete(key)
    except StoreError as exc:
        return [fail("store", f"{store.url}: {exc}", fix)]
    finally:
        store.close()
    if back != payload:
        return [fail("store", f"{store.url} returned other bytes than it was given", "check the store's health")]
    return [ok("store", f"{store.url}: put, get and delete work")]


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_server(ctx: Context) -> list[Check]:
    server = ctx.settings.server
    if _is_loopback(server.host):
        return [ok("server", f"listens on {server.host}:{server.port} (loopback only)")]
    if env_value(server.api_token_env, ctx.environ):
        return [ok("server", f"listens on {server.host}:{server.port}; API token set (${server.api_token_env})")]
    return [fail("server", f"listens on {server.host} without an API token: forgeci serve refuses to start",
                 f"set {server.api_token_env} (e.g. $(openssl rand -hex 32)) in the service's environment file")]


# -- helpers ---------------------------------------------------------------------------------------------------


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _tail(result: subprocess.CompletedProcess[bytes] | None) -> str:
    if result is None:
        return "no output"
    text = (result.stderr or result.stdout or b"").decode(errors="replace").strip()
    return text.splitlines()[-1][:300] if text else f"exit {result.returncode}"


def report(checks: Iterable[Check], out: Callable[[str], None] = print) -> int:
    """Print one line per check and a summary; the exit code."""
    checks = list(checks)
    for check in checks:
        out(check.line())
    counts = {status: sum(c.status is status for c in checks) for status in Status}
    out(f"{counts[Status.ok]} ok, {counts[Status.warn]} warning(s), {counts[Status.fail]} failed")
    return exit_code(checks)
