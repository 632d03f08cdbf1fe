"""A local checkout that `forgeci run` reads: where its top is, and git commands that may read it whoever owns it."""

from __future__ import annotations

from pathlib import Path

from config.errors import ConfigError


def safe_git(top: Path) -> list[str]:
    """`git -C top` for reading the checkout at `top` even when another user owns it (root running `forgeci run`
    in a user's checkout, which git otherwise refuses as "dubious ownership"): `top` is marked safe for this one
    command, never in anyone's git configuration. core.fsmonitor is forced off, so the checkout's own config
    cannot make the git we run start a program of its owner's choosing."""
    # git compares safe.directory with the physical path it finds the checkout at: symlinks resolved.
    return ["git", "-c", f"safe.directory={Path(top).resolve()}", "-c", "core.fsmonitor=false", "-C", str(top)]


def checkout_top(path: Path) -> Path:
    """`path` (absolute, resolved) when it is the top folder of a git checkout; a ConfigError (one line, a usage
    error) when it is not a git repository, or only a folder inside one."""
    for folder in [path, *path.parents]:
        if (folder / ".git").exists():
            if folder == path:
                return path
            raise ConfigError(f"{path} is inside the git repository {folder}, not its top folder: "
                              f"run `forgeci run {folder}`")
    raise ConfigError(f"{path} is not a git repository: forgeci run reads a git checkout's working tree "
                      f"(`git init` makes one)")
