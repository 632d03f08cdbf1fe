"""Job images: build the default image from the Containerfile, bootstrapping a Debian base when no registry answers."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from runner.errors import RunnerError
from runner.podman_cli import podman_cli
from runner.podman_user import PodmanUser

LOCAL_BASE = "localhost/debian:bookworm"
HASH_LABEL = "forgeci.containerfile"
BUSYBOX_IMAGE = "localhost/forgeci-busybox:latest"

Say = Callable[[str], None]


def _say(message: str) -> None:
    print(f"[image] {message}", file=sys.stderr, flush=True)


def default_containerfile() -> Path:
    """The Containerfile in the current directory, else the one shipped beside the packages."""
    here = Path.cwd() / "Containerfile"
    if here.is_file():
        return here
    return Path(__file__).resolve().parent.parent / "Containerfile"


def containerfile_base(text: str) -> str:
    """The default of `ARG BASE=` in a Containerfile ('' when it has none)."""
    match = re.search(r"^\s*ARG\s+BASE=(\S+)", text, re.MULTILINE)
    return match.group(1) if match else ""


def context_files(text: str, containerfile: Path) -> list[str]:
    """What the Containerfile COPYs or ADDs from its own folder (relative paths): the build's whole context.

    The root Containerfile copies nothing, so its context is empty (never the repository and its venv); a service
    image's copies its entrypoint from beside it.
    """
    found: list[str] = []
    for match in re.finditer(r"^\s*(?:COPY|ADD)\s+(.+)$", text, re.MULTILINE | re.IGNORECASE):
        args = [arg for arg in match.group(1).split() if not arg.startswith("--")]
        for source in args[:-1]:
            path = Path(source)
            if path.is_absolute() or ".." in path.parts or not (containerfile.parent / path).is_file():
                raise RunnerError(f"{containerfile} copies {source!r}: only files beside it can be copied")
            found.append(source)
    return found


def image_exists(user: PodmanUser, image: str) -> bool:
    return podman_cli(user, ["image", "exists", image], check=False).returncode == 0


def image_label(user: PodmanUser, image: str, label: str) -> str:
    result = podman_cli(user, ["image", "inspect", "--format", f'{{{{index .Labels "{label}"}}}}', image], check=False
    )
    return result.stdout.decode().strip() if result.returncode == 0 else ""


def apt_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt already uses (deb822 sources or the classic sources.list)."""
    candidates = sorted(apt_dir.glob("sources.list.d/*.sources")) + [apt_dir / "sources.list"]
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        for match in re.finditer(r"^\s*(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.MULTILINE):
            uri = match.group(1)
            if "debian" in uri and "security" not in uri:
                return uri
    return "http://deb.debian.org/debian"


def bootstrap_base(user: PodmanUser, say: Say = _say, suite: str = "bookworm") -> str:
    """Make `localhost/debian:bookworm` with debootstrap + podman import, for hosts without a registry."""
    if image_exists(user, LOCAL_BASE):
        return LOCAL_BASE
    if not shutil.which("debootstrap"):
        raise RunnerError("no registry base image and no debootstrap: run scripts/setup (it installs debootstrap)")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    mirror = apt_mirror()
    with tempfile.TemporaryDirectory(prefix="forgeci-rootfs-") as rootfs:
        say(f"bootstrapping a Debian {suite} base from {mirror} (about a minute)")
        subprocess.run([*sudo, "debootstrap", "--variant=minbase", suite, rootfs, mirror],
                       check=True, stdout=subprocess.DEVNULL)
        say(f"importing it as {LOCAL_BASE}")
        tar = subprocess.Popen([*sudo, "tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        try:
            podman_cli(user, ["import", "-", LOCAL_BASE], stdin=tar.stdout)
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait()
        if sudo:
            subprocess.run([*sudo, "rm", "-rf", rootfs], check=False)
    return LOCAL_BASE


def choose_base(user: PodmanUser, wanted: str, say: Say = _say) -> str:
    """The Containerfile's registry base when present or pullable, else a local debootstrapped one."""
    if wanted and image_exists(user, wanted):
        return wanted
    if wanted:
        pulled = podman_cli(user, ["pull", "-q", wanted], check=False, timeout=600)
        if pulled.returncode == 0:
            return wanted
        say(f"cannot pull {wanted} ({pulled.stderr.decode(errors='replace').strip().splitlines()[-1:]}); "
            f"using a local base instead")
    return bootstrap_base(user, say)


def build_job_image(
    user: PodmanUser, tag: str, containerfile: Path, *, ca_bundle: str = "", force: bool = False, say: Say = _say
) -> bool:
    """Build `tag` from `containerfile` unless an image built from the same file exists; True when it built."""
    text = containerfile.read_text()
    files = context_files(text, containerfile)
    hashed = hashlib.sha256(text.encode())
    for name in files:  # a changed entrypoint rebuilds the image too
        hashed.update(b"\0" + name.encode() + b"\0" + (containerfile.parent / name).read_bytes())
    digest = hashed.hexdigest()[:16]
    if not force and image_label(user, tag, HASH_LABEL) == digest:
        say(f"{tag} is up to date (Containerfile {digest})")
        return False
    base = choose_base(user, containerfile_base(text), say)
    # A context of only what the Containerfile copies keeps the repository and its venv out of the build.
    with tempfile.TemporaryDirectory(prefix="forgeci-build-") as context:
        os.chmod(context, 0o755)
        target = Path(context) / "Containerfile"
        target.write_text(text)
        target.chmod(0o644)
        for name in files:
            copied = Path(context) / name
            copied.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(containerfile.parent / name, copied)
            copied.chmod(0o755 if os.access(containerfile.parent / name, os.X_OK) else 0o644)
        argv = ["podman", "build", "--build-arg", f"BASE={base}", "--label", f"{HASH_LABEL}={digest}",
                "-t", tag, "-f", str(target)]
        if ca_bundle and os.path.isfile(ca_bundle):
            argv += ["-v", f"{ca_bundle}:/etc/ssl/host-ca.crt:ro"]
        say(f"building {tag} from {containerfile} on {base}")
        result = user.run([*argv, context], check=False, capture=False)
        if result.returncode != 0:
            raise RunnerError(f"podman build of {tag} failed (exit {result.returncode}); see the output above")
    return True


def build_busybox_image(user: PodmanUser, tag: str = BUSYBOX_IMAGE, say: Say = _say) -> bool:
    """A 2 MB image from the host's static busybox, for fast tests; True when it built."""
    if image_exists(user, tag):
        return False
    busybox = shutil.which("busybox")
    if not busybox:
        raise RunnerError("busybox is not installed: run scripts/setup (it installs busybox-static)")
    with tempfile.TemporaryDirectory(prefix="forgeci-busybox-") as root:
        rootfs = Path(root)
        (rootfs / "bin").mkdir()
        for folder in ("tmp", "workspace", "etc", "root"):
            (rootfs / folder).mkdir()
        (rootfs / "tmp").chmod(0o1777)
        shutil.copy2(busybox, rootfs / "bin" / "busybox")
        applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout.split()
        for applet in applets:
            if applet != "busybox":
                (rootfs / "bin" / applet).symlink_to("busybox")
        (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (rootfs / "etc" / "group").write_text("root:x:0:\n")
        tar = subprocess.Popen(["tar", "-C", root, "--owner=0", "--group=0", "-c", "."], stdout=subprocess.PIPE)
        try:
            podman_cli(user, ["import", "--change", "CMD [\"/bin/sh\"]", "-", tag], stdin=tar.stdout)
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait()
    say(f"built {tag}")
    return True
