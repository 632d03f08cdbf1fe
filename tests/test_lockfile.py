"""requirements.lock is in step with pyproject.toml: every dependency pinned within its specifier, with hashes."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
COMPILE = ("pip-compile --allow-unsafe --build-deps-for=editable --extra=test --generate-hashes --no-emit-find-links "
           "--no-emit-index-url --output-file=requirements.lock --strip-extras pyproject.toml")
HOW = f"re-lock: {COMPILE} (pip-tools; see README, Pinned dependencies)"


@dataclass
class Pin:
    name: str
    version: Version
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)


def read_lock(text: str) -> dict[str, Pin]:
    """The lock's pins by canonical name, with their hashes and `# via` annotations (pip-compile's format)."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if match := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line):
            current = Pin(canonicalize_name(match[1]), Version(match[2]))
            assert current.name not in pins, f"{current.name} pinned twice"
            pins[current.name] = current
        elif current is not None and (hashed := re.search(r"--hash=(sha256:[0-9a-f]{64})", stripped)):
            current.hashes.append(hashed[1])
        elif current is not None and stripped.startswith("#"):
            via = stripped.lstrip("#").strip()
            current.via.append(via[len("via "):] if via.startswith("via ") else via)
        elif stripped and not stripped.startswith(("#", "--")):
            raise AssertionError(f"unexpected line in requirements.lock: {line!r}")
    return pins


def declared() -> dict[str, list[Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {
        "dependencies": [Requirement(r) for r in project["project"]["dependencies"]],
        "test": [Requirement(r) for r in project["project"]["optional-dependencies"]["test"]],
        "build": [Requirement(r) for r in project["build-system"]["requires"]],
    }


def test_the_lock_was_made_by_pip_compile_with_hashes_for_the_test_extra() -> None:
    header = LOCK.read_text().split("\n\n", 1)[0]
    assert "--generate-hashes" in header and "--extra=test" in header and "pyproject.toml" in header, HOW
    assert "--index-url" not in LOCK.read_text() and "--find-links" not in LOCK.read_text(), \
        "the lock must not name this machine's package mirrors"


def test_every_pin_has_a_hash() -> None:
    unhashed = [name for name, pin in read_lock(LOCK.read_text()).items() if not pin.hashes]
    assert not unhashed, f"pins without --hash (pip install --require-hashes refuses them): {unhashed}; {HOW}"


def test_every_declared_dependency_is_pinned_within_its_specifier() -> None:
    pins = read_lock(LOCK.read_text())
    problems = []
    for group, requirements in declared().items():
        for req in requirements:
            name = canonicalize_name(req.name)
            pin = pins.get(name)
            if pin is None:
                problems.append(f"{req} ({group}) is not in the lock")
            elif not req.specifier.contains(pin.version, prereleases=True):
                problems.append(f"{req} ({group}) but the lock pins {pin.version}")
            for extra in sorted(req.extras):  # what an extra brings is pinned too, installed because of it
                if not any(any(name in via.split() for via in other.via) for other in pins.values()):
                    problems.append(f"{req}: nothing in the lock comes via {name} (its [{extra}] extra)")
    assert not problems, "; ".join(problems) + f"; {HOW}"


def test_the_lock_pins_nothing_pyproject_dropped() -> None:
    direct = {canonicalize_name(r.name) for group in ("dependencies", "test") for r in declared()[group]}
    build = {canonicalize_name(r.name) for r in declared()["build"]}
    stale = []
    for name, pin in read_lock(LOCK.read_text()).items():
        if "forgeci (pyproject.toml)" in pin.via and name not in direct:
            stale.append(name)
        if "forgeci (pyproject.toml::build-system.requires)" in pin.via and name not in build:
            stale.append(f"{name} (build)")
    assert not stale, f"the lock still pins dependencies pyproject.toml no longer declares: {stale}; {HOW}"


def test_the_parser_sees_a_drift() -> None:
    lock = read_lock("aiohttp==3.0.0 \\\n    --hash=sha256:" + "0" * 64 + "\n    # via forgeci (pyproject.toml)\n")
    req = Requirement("aiohttp>=3.9")
    assert not req.specifier.contains(lock["aiohttp"].version)
    assert lock["aiohttp"].via == ["forgeci (pyproject.toml)"]


def test_setup_installs_from_the_lock() -> None:
    setup = (ROOT / "scripts" / "setup").read_text()
    assert "--require-hashes -r requirements.lock" in setup and "--no-deps" in setup
    assert "requirements.lock" in re.search(r"^WANT=.*$", setup, re.MULTILINE)[0], \
        "setup must reinstall when the lock changes"  # type: ignore[index]
    commands = [line.strip() for line in setup.splitlines() if line.strip() and not line.strip().startswith("#")]
    doctor = max(i for i, c in enumerate(commands) if c.endswith("forgeci\" doctor"))
    after = commands[doctor + 1:]  # what is printed: "ready", or an agent host's next steps
    assert 'say "ready"' in after and all(c.startswith(("say ", "if ", "else", "fi")) for c in after), \
        "setup ends by running forgeci doctor"
