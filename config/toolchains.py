"""What each package manager installs and where its cache lives: one table for the caches a job detects from
its lockfiles (runner.cache) and for the [cache] tables `forgeci init` writes (config.starter)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

CACHE_DIR = ".forgeci-cache"  # package-manager caches that normally live in $HOME, pointed into the workspace
CONTAINER_WORKSPACE = "/workspace"  # where the workspace is in the job's container


@dataclass(frozen=True)
class Toolchain:
    """What a lockfile at the repository root says to cache, and the variables that point caches inside."""

    name: str  # the package manager: npm, yarn, pnpm, bun, pip, uv, go, cargo
    lockfiles: tuple[str, ...]  # glob patterns at the repository root
    paths: tuple[str, ...]  # relative to the workspace
    env: Mapping[str, str] = field(default_factory=dict)  # variable -> path relative to the workspace

    def container_env(self) -> dict[str, str]:
        """The variables with their paths as the job's container sees them."""
        return {name: f"{CONTAINER_WORKSPACE}/{rel}" for name, rel in self.env.items()}


_NPM = {"npm_config_cache": f"{CACHE_DIR}/npm"}
TOOLCHAINS: tuple[Toolchain, ...] = (
    Toolchain("npm", ("package-lock.json",), ("node_modules", f"{CACHE_DIR}/npm"), _NPM),
    Toolchain("yarn", ("yarn.lock",), ("node_modules", f"{CACHE_DIR}/npm", f"{CACHE_DIR}/yarn"),
              {**_NPM, "YARN_CACHE_FOLDER": f"{CACHE_DIR}/yarn"}),
    Toolchain("pnpm", ("pnpm-lock.yaml",), ("node_modules", f"{CACHE_DIR}/npm", f"{CACHE_DIR}/pnpm-store"),
              {**_NPM, "npm_config_store_dir": f"{CACHE_DIR}/pnpm-store"}),
    Toolchain("bun", ("bun.lock", "bun.lockb"), ("node_modules", f"{CACHE_DIR}/bun"),
              {"BUN_INSTALL_CACHE_DIR": f"{CACHE_DIR}/bun"}),
    Toolchain("pip", ("requirements*.txt", "poetry.lock"), (".venv", f"{CACHE_DIR}/pip"),
              {"PIP_CACHE_DIR": f"{CACHE_DIR}/pip"}),
    Toolchain("uv", ("uv.lock",), (".venv", f"{CACHE_DIR}/uv"), {"UV_CACHE_DIR": f"{CACHE_DIR}/uv"}),
    Toolchain("go", ("go.sum",), (f"{CACHE_DIR}/go/mod", f"{CACHE_DIR}/go/build"),
              {"GOMODCACHE": f"{CACHE_DIR}/go/mod", "GOCACHE": f"{CACHE_DIR}/go/build"}),
    Toolchain("cargo", ("Cargo.lock",), ("target", f"{CACHE_DIR}/cargo"), {"CARGO_HOME": f"{CACHE_DIR}/cargo"}),
)


def toolchain(name: str) -> Toolchain:
    """The TOOLCHAINS entry of package manager `name`."""
    for tool in TOOLCHAINS:
        if tool.name == name:
            return tool
    raise KeyError(f"no toolchain {name!r}")
