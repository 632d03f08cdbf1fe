"""The container engine as the runner sees it: one interface, the real Podman one and the tests' fake behind it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runner.errors import ContainerRefused, EngineError, ImageMissing
from runner.podman_user import PodmanUser

__all__ = ["ContainerRefused", "ContainerSpec", "ContainerState", "Engine", "EngineError", "ImageMissing",
           "OutputCallback", "PodSpec", "ServiceContainerSpec"]

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
    pod: str = ""  # the pod it joins (its network is then the pod's), "" for a container of its own
    hosts_file: Path | None = None  # bind-mounted read-only at /etc/hosts (a pod's members share one)


@dataclass(frozen=True)
class PodSpec:
    """The pod a job with services runs in: one network namespace for the job's container and its services."""

    job_id: int
    network: str
    hostname: str


@dataclass(frozen=True)
class ServiceContainerSpec:
    """One service container of a job's pod: hardened, limited and labelled like the job's own container."""

    job_id: int
    name: str  # the service's name in the pipeline, also its host name
    image: str
    pod: str
    hosts_file: Path
    env: Mapping[str, str] = field(default_factory=dict)
    command: Sequence[str] | None = None  # None: the image's CMD
    memory: str = ""
    pids_limit: int = 0
    ulimits: Sequence[str] = ()
    limits: bool = True


@dataclass(frozen=True)
class ContainerState:
    """Whether a container runs, and how it ended when it does not."""

    running: bool
    exit_code: int | None = None
    error: str = ""  # what the runtime said when the container could not run
    oom_killed: bool = False


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

    async def image_id(self, image: str) -> str:
        """The image's id (hex, no `sha256:`), '' when the Podman user's storage has no such image."""

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
        """Every job container of this instance (services included): container id -> job id."""

    async def start_pod(self, spec: PodSpec) -> str:
        """Create a labelled pod for a job and its services; returns its id. EngineError."""

    async def start_service(self, spec: ServiceContainerSpec) -> str:
        """Create and start a service container in its pod; returns its id. ImageMissing, ContainerRefused."""

    async def image_ports(self, image: str) -> tuple[int, ...]:
        """The TCP ports the image exposes (EXPOSE), in order."""

    async def container_state(self, container_id: str) -> ContainerState:
        """Whether the container runs; a container that is gone is not running (exit code None)."""

    async def follow_logs(self, container_id: str, on_output: OutputCallback) -> None:
        """Call on_output on the loop with the container's output from its start until it stops; returns then."""

    async def remove_pod(self, pod_id: str) -> None:
        """Kill every container of the pod, then remove it; an already-gone pod is fine."""

    async def job_pods(self) -> dict[str, int]:
        """Every job pod of this instance: pod id -> job id."""

    async def inspect(self, container_id: str) -> dict[str, Any]: ...

    async def remove_tree(self, path: Path) -> None:
        """Delete a folder a job's containers wrote into, whatever uids its files have."""
