"""What `forgeci init` finds in a repository: one DetectedJob per toolchain (Node, Python, Go, Rust, a Makefile),
from its manifests and lockfiles, with the project's own test command where it has one, and why."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.toolchains import Toolchain, toolchain

PROJECT_KINDS = ("node", "python", "go", "rust", "make")  # the order detect_project reports and jobs come in
GO_IMAGE = "docker.io/library/golang:1"  # the default job image has no Go and no Rust
RUST_IMAGE = "docker.io/library/rust:1"
_GLOBAL = "npm install -g --no-fund --no-audit"
COREPACK = f"{_GLOBAL} corepack && corepack enable"
COREPACK_ENV = {"COREPACK_ENABLE_DOWNLOAD_PROMPT": "0"}  # a step has no one to answer corepack's question
NPM_PLACEHOLDER = "no test specified"  # `npm init`'s scripts.test, which only fails


@dataclass(frozen=True)
class DetectedJob:
    """One job of the starter pipeline: its steps, what it caches, and the comment lines saying why."""

    kind: str  # one of PROJECT_KINDS
    role: str  # "test" or "lint": the job's name is made from both
    why: tuple[str, ...]
    steps: tuple[tuple[str, str], ...]  # (name, run)
    cache: Toolchain | None = None
    key_files: tuple[str, ...] = ()
    image: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The [jobs.NAME] table (without its name)."""
        job: dict[str, Any] = {}
        if self.image:
            job["image"] = self.image
        env = {**(self.cache.container_env() if self.cache else {}), **self.env}
        if env:
            job["env"] = env
        if self.cache is not None:
            job["cache"] = {"paths": list(self.cache.paths), "key_files": list(self.key_files)}
        job["steps"] = [{"name": name, "run": run} for name, run in self.steps]
        return job


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None when it is missing or not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- Node -------------------------------------------------------------------------------------------------

_NODE_LOCKS = (  # first match wins: a repository with two lockfiles usually migrated to the later tool
    ("pnpm-lock.yaml", "pnpm"), ("yarn.lock", "yarn"), ("bun.lock", "bun"), ("bun.lockb", "bun"),
    ("package-lock.json", "npm"), ("npm-shrinkwrap.json", "npm"),
)
_RUN = {"npm": "npm run", "yarn": "yarn run", "pnpm": "pnpm run", "bun": "bun run"}
# `bun test` would be Bun's own test runner, not the script.
_TEST = {"npm": "npm test", "yarn": "yarn test", "pnpm": "pnpm test", "bun": "bun run test"}


def _node_install(manager: str, lock: str | None, version: str) -> str:
    if manager == "npm":
        return "npm ci" if lock else "npm install"
    if manager == "bun":
        return "bun install --frozen-lockfile" if lock else "bun install"
    # yarn and pnpm are not in the default image: npm installs the version packageManager names (Yarn 2+ only
    # through corepack, which npm installs too).
    version = version.partition("+")[0]  # `9.1.0+sha512.…`: npm takes the version alone
    if manager == "yarn":
        major = version.split(".")[0]
        if major not in ("", "0", "1"):
            return f"{COREPACK} && yarn install{' --immutable' if lock else ''}"
        return f"{_GLOBAL} yarn@{version or '1'} && yarn install{' --frozen-lockfile' if lock else ''}"
    return f"{_GLOBAL} pnpm@{version or 'latest'} && pnpm install{' --frozen-lockfile' if lock else ''}"


def detect_node(root: Path) -> list[DetectedJob]:
    lock = next(((name, tool) for name, tool in _NODE_LOCKS if (root / name).is_file()), None)
    has_manifest = (root / "package.json").is_file()
    if not has_manifest and lock is None:
        return []
    manifest = read_json(root / "package.json") if has_manifest else {}
    why: list[str] = []
    if manifest is None:
        why.append("package.json is not a JSON object: read as if it had no scripts")
        manifest = {}
    declared = manifest.get("packageManager")
    name, _, version = declared.partition("@") if isinstance(declared, str) else ("", "", "")
    if name in _RUN:
        manager = name
        why.append(f"package.json: packageManager {declared}")
    else:
        manager = lock[1] if lock else "npm"
    lockfile = lock[0] if lock and lock[1] == manager else None
    found = [n for n in ("package.json", lockfile) if n and (root / n).is_file()]
    why.insert(0, f"Node ({manager}): {' and '.join(found)}" + ("" if lockfile else ", no lockfile"))
    install = _node_install(manager, lockfile, version)
    scripts = manifest.get("scripts") if isinstance(manifest.get("scripts"), dict) else {}
    run = _RUN[manager]
    steps: list[tuple[str, str]] = [("install", install)]
    test = scripts.get("test")
    if isinstance(test, str) and test.strip() and NPM_PLACEHOLDER not in test:
        steps.append(("test", _TEST[manager]))
        why.append(f"scripts.test: {test}")
    elif isinstance(scripts.get("build"), str):
        steps.append(("build", f"{run} build"))
        why.append("no scripts.test (or npm's placeholder): runs scripts.build instead")
    else:
        why.append("no scripts.test (or npm's placeholder) and no scripts.build: add your test step")
    cache, keys = toolchain(manager), tuple(found)
    env = COREPACK_ENV if "corepack" in install else {}
    if manager in ("yarn", "pnpm"):
        why.append(f"the default job image has Node and npm, not {manager}: "
                   + ("corepack (from npm) brings it" if env else "npm installs it first"))
    jobs = [DetectedJob("node", "test", tuple(why), tuple(steps), cache, keys, env=env)]
    if isinstance(scripts.get("lint"), str):
        jobs.append(DetectedJob("node", "lint", (f"scripts.lint: {scripts['lint']}",),
                                (("install", install), ("lint", f"{run} lint")), cache, keys, env=env))
    return jobs


# -- Go, Rust, make -----------------------------------------------------------------------------------------


def detect_go(root: Path) -> list[DetectedJob]:
    found = [n for n in ("go.mod", "go.sum") if (root / n).is_file()]
    if not found:
        return []
    why = (f"Go: {' and '.join(found)}",
           f"the default job image has no Go: this job uses {GO_IMAGE} (pull it, or name your own)")
    return [DetectedJob("go", "test", why, (("build", "go build ./..."), ("test", "go test ./...")),
                        toolchain("go"), tuple(found), GO_IMAGE)]


def detect_rust(root: Path) -> list[DetectedJob]:
    found = [n for n in ("Cargo.toml", "Cargo.lock") if (root / n).is_file()]
    if not found:
        return []
    locked = " --locked" if (root / "Cargo.lock").is_file() else ""
    why = (f"Rust: {' and '.join(found)}" + ("" if locked else " (no Cargo.lock: cargo resolves the versions)"),
           f"the default job image has no Rust: this job uses {RUST_IMAGE} (pull it, or name your own)")
    return [DetectedJob("rust", "test", why, (("build", f"cargo build{locked}"), ("test", f"cargo test{locked}")),
                        toolchain("cargo"), tuple(found), RUST_IMAGE)]


_MAKE_TEST = re.compile(r"^test\s*:(?!=)", re.M)  # a rule `test:` or `test: deps`, not `test := value`


def make_test_target(root: Path) -> str | None:
    """The name of the Makefile that has a `test` target, or None."""
    for name in ("GNUmakefile", "makefile", "Makefile"):
        try:
            text = (root / name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if _MAKE_TEST.search(text):
            return name
    return None


def detect_make(root: Path) -> list[DetectedJob]:
    name = make_test_target(root)
    if name is None:
        return []
    return [DetectedJob("make", "test", (f"{name}: has a test target",), (("test", "make test"),))]
