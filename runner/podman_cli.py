"""The `podman` command line as the Podman user: image builds, `podman unshare`, debug containers.

Kept apart from runner/podman.py (the API engine) so that what only needs the command line does not import
podman-py; with it, these two modules are the only ones that talk to Podman.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from runner.engine import ContainerSpec
from runner.podman_user import PodmanUser

log = logging.getLogger(__name__)

CA_IN_CONTAINER = "/etc/ssl/host-ca.crt"
CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE",
                "GIT_SSL_CAINFO")


def with_ca(spec: ContainerSpec) -> tuple[dict[str, str], list[dict[str, object]]]:
    """The container's environment and mounts: the workspace, and the host's CA bundle with the variables that
    point every common tool at it (TLS-intercepting proxies)."""
    env = dict(spec.env)
    mounts: list[dict[str, object]] = [{"type": "bind", "source": str(spec.workspace), "target": "/workspace"}]
    if spec.ca_bundle and os.path.isfile(spec.ca_bundle):
        mounts.append({"type": "bind", "source": spec.ca_bundle, "target": CA_IN_CONTAINER, "read_only": True})
        env.update({name: CA_IN_CONTAINER for name in CA_VARIABLES})
    return env, mounts


def run_debug_container(
    user: PodmanUser, spec: ContainerSpec, command: Sequence[str], *, tty: bool, labels: Mapping[str, str],
) -> int:
    """`podman run --rm -i` of `command` on `spec`, with a job container's hardening, limits and network; our
    terminal is its terminal. Returns its exit code."""
    env, mounts = with_ca(spec)
    argv = ["run", "--rm", "-i", *(["-t"] if tty else []), "--init", "--security-opt", "no-new-privileges",
            "--network", spec.network, "-w", "/workspace"]
    for mount in mounts:
        argv += ["-v", f"{mount['source']}:{mount['target']}{':ro' if mount.get('read_only') else ''}"]
    argv += [f"--ulimit={u}" for u in spec.ulimits]
    if spec.limits and spec.memory:
        argv.append(f"--memory={spec.memory}")
    if spec.limits and spec.pids_limit:
        argv.append(f"--pids-limit={spec.pids_limit}")
    argv += [f"--label={k}={v}" for k, v in labels.items()]
    argv += [f"--env={k}={v}" for k, v in env.items()]
    user.ensure_runtime_dir()
    return podman_cli(user, [*argv, "--", spec.image, *command], check=False, capture=False).returncode


def podman_cli(
    user: PodmanUser, args: Sequence[str], *, check: bool = True, capture: bool = True, timeout: float | None = None,
    stdin: int | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """`podman ARGS` as the Podman user: the one place the command line runs (images, unshare, debug)."""
    return user.run(["podman", *args], check=check, capture=capture, timeout=timeout, stdin=stdin)


def remove_tree_as(user: PodmanUser, path: Path, timeout: float = 300.0) -> None:
    """Delete a folder a container wrote into: files of its other uids belong to the user's subuid range, which
    only the user's namespace (`podman unshare`) may delete; what that cannot see (root's files) goes after."""
    if not os.path.lexists(path):
        return
    try:
        podman_cli(user, ["unshare", "rm", "-rf", "--", str(path)], check=False, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("podman unshare rm %s: %s", path, exc)
    if os.path.lexists(path):
        shutil.rmtree(path)


def remove_detached(user: PodmanUser, containers: Sequence[str], user_trees: Sequence[Path],
                    own_trees: Sequence[Path]) -> None:
    """Remove `containers`, then the folders they wrote into (as the Podman user, in its namespace), then
    `own_trees` (as us), in a process of its own that outlives ours: `forgeci run` exits as soon as it has printed
    its summary, and nothing is left behind."""
    quiet = " >/dev/null 2>&1"
    script = []
    if containers:
        script.append(shlex.join(user.command(["podman", "rm", "-f", "-t", "0", "--", *containers])) + quiet)
    script += [shlex.join(user.command(["podman", "unshare", "rm", "-rf", "--", str(t)])) + quiet for t in user_trees]
    script += [shlex.join(["rm", "-rf", "--", str(t)]) + quiet for t in own_trees]
    if not script:
        return
    user.ensure_runtime_dir()
    subprocess.Popen(["sh", "-c", "; ".join(script)], start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/",
                     env=None if user.switch else {**os.environ, **user.env()})
