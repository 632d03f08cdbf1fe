"""The container engine as the runner sees it: one interface, the real Podman one and the tests' fake behind it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runner.errors import EngineError, ImageMissing
from runner.podman_user import PodmanUser

__all__ = ["ContainerSpec", "Engine", "EngineError", "ImageMissing", "OutputCallback"]

OutputCallback = Callable[[str, bytes], None]  # (stream name, bytes) as a step writes them


@dataclass(frozen=True)
class ContainerSpec:
    """What a job's container looks like; the executor fills it from the settings and the pipeline."""

    job_id: int
    image: str
    workspace: Path
    env: Mapping[str, str] = field(default_factory=dict)
    network: str = "slirp4netns"
    memory: str = ""
    pids_limit: int = 0
    ulimits: Sequence[str] = ()
    ca_bundle: str = ""
    limits: bool = True  # False on cgroup-v1 rootless hosts, where Podman ignores them anyway


class Engine(Protocol):
    """Job containers and the files jobs touch. Every call a job makes of its engine goes through this.

    `user` is the account that owns workspaces, mirrors and whatever a container writes (the Podman user when
    forgeci runs as root); git runs as it, and `remove_tree` deletes what its containers left.
    """

    instance: str  # labels this forgeci's containers, so that reaping never touches another instance's
    user: PodmanUser

    async def start(self) -> None:
        """Bring the engine up (the real one starts its private Podman service and a watchdog)."""

    async def close(self) -> None:
        """Tear down what start() brought up."""

    async def alive(self) -> bool:
        """Whether the engine answers now (health checks); never raises."""

    async def ping(self) -> bool:
        """True when the engine answers; a dead or missing service is False, never an exception."""

    async def cgroup_limits_apply(self) -> bool:
        """False where memory and pids limits are silently ignored (rootless Podman on cgroup v1)."""

    async def image_exists(self, image: str) -> bool: ...

    async def start_job_container(self, spec: ContainerSpec) -> str:
        """Create and start the job's long-lived container; returns its id. ImageMissing, EngineError."""

    async def has_bash(self, container_id: str, image: str) -> bool: ...

    def step_command(self, run: str, bash: bool) -> list[str]:
        """The argv that runs a step's script so that `stop_step` can signal it."""

    async def exec(
        self, container_id: str, argv: Sequence[str], env: Mapping[str, str], on_output: OutputCallback,
        workdir: str = "/workspace",
    ) -> int:
        """Run argv in the container, calling on_output on the loop as output arrives; returns the exit code."""

    async def stop_step(self, container_id: str, sig: str = "TERM") -> None:
        """Signal the running step's process group (TERM or KILL)."""

    async def remove(self, container_id: str) -> None:
        """Kill and remove a container; an already-gone one is fine."""

    async def job_containers(self) -> dict[str, int]:
        """Every job container of this instance: container id -> job id."""

    async def inspect(self, container_id: str) -> dict[str, Any]: ...

    async def remove_tree(self, path: Path) -> None:
        """Delete a folder a job's containers wrote into, whatever uids its files have."""
