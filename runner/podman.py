"""The Podman engine: job containers, pods and service containers, streamed execs and logs, stopping steps (its
private API service is runner/podman_service.py, its command line runner/podman_cli.py; nothing else talks to
Podman)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from podman import PodmanClient
from podman.errors import APIError, ImageNotFound, NotFound, PodmanError

from runner.engine import ContainerSpec, ContainerState, OutputCallback, PodSpec, ServiceContainerSpec
from runner.errors import ContainerRefused, EngineError, ImageMissing
from runner.podman_service import PodmanService
from runner.podman_shared import SharedPodmanService
from runner.podman_cli import CA_IN_CONTAINER, CA_VARIABLES, podman_cli, remove_detached, remove_tree_as, with_ca
from runner.podman_user import PodmanUser
from runner.timings import note, phase

__all__ = ["CA_IN_CONTAINER", "CA_VARIABLES", "ContainerSpec", "EngineError", "ImageMissing", "PodmanEngine",
           "PodmanService", "podman_cli"]

log = logging.getLogger(__name__)

JOB_LABEL = "forgeci.job"
SERVICE_LABEL = "forgeci.service"  # a service container's name in its pipeline
# Several forgeci instances (a server, a `forgeci run`, tests) share one Podman user's containers: each
# labels its own with its data dir so that start-up reaping never touches another instance's jobs.
INSTANCE_LABEL = "forgeci.instance"
STEP_PID_FILE = "/tmp/.forgeci-step.pid"
STREAMS = {1: "stdout", 2: "stderr"}



def unified_cgroup(mounts: str = "/proc/self/mounts") -> bool:
    """Whether /sys/fs/cgroup is cgroup v2 (a hybrid host's tmpfs of v1 controllers is not): what Podman's
    `host.cgroupVersion` reports."""
    try:
        with open(mounts) as table:
            return any(f[1] == "/sys/fs/cgroup" and f[2] == "cgroup2" for f in (line.split() for line in table)
                       if len(f) > 2)
    except OSError:
        return False


def parse_ulimit(text: str) -> dict[str, object]:
    """`nofile=20000:20000` -> the Docker-style dict podman-py wants."""
    name, _, values = text.partition("=")
    soft, _, hard = values.partition(":")
    return {"Name": name.strip(), "Soft": int(soft), "Hard": int(hard or soft)}


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def read_frames(raw: Any, deliver: Callable[[str, bytes], None]) -> None:
    """Multiplexed frames (1 byte stream, 3 padding, 4 bytes big-endian length) until the stream ends. Reading
    frame by frame (never a large buffer) delivers each write as soon as it is made."""
    while True:
        header = raw.read(8)
        if len(header) < 8:
            return
        kind, length = struct.unpack(">BxxxL", header)
        data = raw.read(length) if length else b""
        if data:
            deliver(STREAMS.get(kind, "stdout"), data)


WATCHDOG_INTERVAL = 2.0  # seconds between liveness checks of the Podman service we started


class PodmanEngine:
    """Job containers through podman-py against our own `podman system service` (or `podman_url`'s);
    every blocking call runs in a worker thread."""

    def __init__(self, user: PodmanUser, *, instance: str, url: str = "", state_dir: Path | None = None,
                 service: PodmanService | SharedPodmanService | None = None) -> None:
        if not url and state_dir is None and service is None:
            raise ValueError("PodmanEngine needs a service url, a service, or a state_dir to start one in")
        self.user = user
        self.instance = instance
        if service is None and not url and state_dir is not None:
            service = PodmanService(user, state_dir)
        self.service = None if url else service
        self.url = url or (self.service.url if self.service else "")
        self.client = PodmanClient(base_url=self.url, timeout=60)
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.service is not None:
            with phase("podman service (connect, or start)"):
                await asyncio.to_thread(self.service.start)
            if self.service.shared and not self.service.started_it:
                note("the shared Podman service was already running")
            self._watchdog = asyncio.create_task(self._watch(), name="forgeci-podman-watchdog")

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
            self._watchdog = None
        self.client.close()
        if self.service is not None:
            await asyncio.to_thread(self.service.stop)

    async def _watch(self) -> None:
        """Restart the Podman service when it dies; jobs it took down go back to the queue as infra faults."""
        assert self.service is not None
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL)
            try:
                await asyncio.to_thread(self.service.ensure)
            except Exception as exc:  # keep watching: the next round may succeed
                log.error("could not restart the Podman service: %s", exc)

    async def alive(self) -> bool:
        if self.service is not None:
            return await asyncio.to_thread(self.service.alive)
        return await self.ping()

    async def remove_tree(self, path: Path) -> None:
        self.user.ensure_runtime_dir()
        await asyncio.to_thread(remove_tree_as, self.user, path)

    def remove_detached(self, containers: Sequence[str], user_trees: Sequence[Path], own_trees: Sequence[Path]) -> None:
        """Containers and folders removed by a process that outlives this one (`forgeci run`'s clean-up)."""
        remove_detached(self.user, containers, user_trees, own_trees)

    async def _call(self, func: Callable[..., object], *args: object, what: str) -> object:
        try:
            return await asyncio.to_thread(func, *args)
        except ImageNotFound as exc:
            raise ImageMissing(f"{what}: image not found ({exc})") from exc
        except (PodmanError, OSError) as exc:
            raise EngineError(f"{what}: {exc}") from exc

    async def info(self) -> dict[str, Any]:
        return dict(await self._call(self.client.info, what="podman info"))  # type: ignore[call-overload]

    async def cgroup_limits_apply(self) -> bool:
        """False on rootless cgroup-v1 hosts, where Podman ignores memory and pids limits. Our own service runs
        on this host as the Podman user: the mount table says it without a `podman info` (0.2 s)."""
        if self.service is not None:
            return self.user.uid == 0 or unified_cgroup()
        host = (await self.info()).get("host", {})
        rootless = bool(host.get("security", {}).get("rootless", True))
        return not (rootless and host.get("cgroupVersion") == "v1")

    async def image_exists(self, image: str) -> bool:
        return bool(await self._call(self.client.images.exists, image, what=f"looking up {image}"))

    async def image_id(self, image: str) -> str:
        try:
            found = await self._call(self.client.images.get, image, what=f"inspecting {image}")
        except ImageMissing:
            return ""
        return str(found.id).removeprefix("sha256:")  # type: ignore[attr-defined]

    async def start_job_container(self, spec: ContainerSpec) -> str:
        """Create and start the job's long-lived container; steps run in it as execs."""
        with phase("image check"):
            present = await self.image_exists(spec.image)
        if not present:
            raise ImageMissing(f"image {spec.image} is not in the Podman user's storage "
                               f"(build it with `forgeci image build`, or fix the pipeline's image)")
        env, mounts = with_ca(spec)
        kwargs = self._hardened(spec.job_id, spec.pod, spec.hosts_file, spec.ulimits,
                                spec.memory if spec.limits else "", spec.pids_limit if spec.limits else 0)
        kwargs.update(image=spec.image, command=["sleep", "infinity"], environment=env, working_dir="/workspace",
                      name=f"forgeci-job-{spec.job_id}-{os.urandom(3).hex()}")
        kwargs["mounts"] = [*mounts, *kwargs["mounts"]]  # type: ignore[misc]
        if not spec.pod:
            kwargs["network_mode"] = spec.network

        def create_and_start() -> str:
            container = self.client.containers.create(**kwargs)
            try:
                container.start()
            except Exception:
                container.remove(force=True)
                raise
            return str(container.id)

        with phase("container create + start"):
            return str(await self._call(create_and_start, what=f"starting a container from {spec.image}"))

    def _hardened(self, job_id: int, pod: str, hosts_file: Path | None, ulimits: Sequence[str], memory: str,
                  pids_limit: int) -> dict[str, object]:
        """What every container of a job gets: init, no new privileges, limits, labels, the pod's hosts file."""
        kwargs: dict[str, object] = dict(
            init=True, detach=True, no_new_privileges=True, ulimits=[parse_ulimit(u) for u in ulimits],
            labels={JOB_LABEL: str(job_id), INSTANCE_LABEL: self.instance},
            mounts=[] if hosts_file is None else [
                {"type": "bind", "source": str(hosts_file), "target": "/etc/hosts", "read_only": True}],
            # k8s-file, whatever containers.conf says: follow_logs must end when the container stops.
            log_config={"Type": "k8s-file"},
        )
        if pod:
            kwargs["pod"] = pod
        if memory:
            kwargs["mem_limit"] = memory
        if pids_limit:
            kwargs["pids_limit"] = pids_limit
        return kwargs

    async def start_pod(self, spec: PodSpec) -> str:
        """A pod on the job's network; Podman labels neither its infra container nor, without this, the pod."""
        body = {"name": f"forgeci-pod-{spec.job_id}-{os.urandom(3).hex()}", "hostname": spec.hostname,
                "labels": {JOB_LABEL: str(spec.job_id), INSTANCE_LABEL: self.instance},
                "netns": {"nsmode": spec.network}}

        def create() -> str:
            response = self.client.api.post("/pods/create", data=json.dumps(body))
            response.raise_for_status()
            return str(response.json()["Id"])

        return str(await self._call(create, what=f"creating the pod of job {spec.job_id}"))

    async def start_service(self, spec: ServiceContainerSpec) -> str:
        """A service container in the job's pod. A start the runtime refuses (a bad command) is ContainerRefused."""
        if not await self.image_exists(spec.image):
            raise ImageMissing(f"image {spec.image} is not in the Podman user's storage")
        kwargs = self._hardened(spec.job_id, spec.pod, spec.hosts_file, spec.ulimits,
                                spec.memory if spec.limits else "", spec.pids_limit if spec.limits else 0)
        kwargs.update(image=spec.image, environment=dict(spec.env),
                      name=f"forgeci-job-{spec.job_id}-{spec.name}-{os.urandom(3).hex()}")
        kwargs["labels"] = {**kwargs["labels"], SERVICE_LABEL: spec.name}  # type: ignore[dict-item]
        if spec.command is not None:
            kwargs["command"] = list(spec.command)

        def create_and_start() -> str:
            container = self.client.containers.create(**kwargs)
            try:
                container.start()
            except APIError as exc:  # the engine answered: the container itself cannot run
                container.remove(force=True)
                raise ContainerRefused(str(exc.explanation or exc)) from exc
            except Exception:
                container.remove(force=True)
                raise
            return str(container.id)

        return str(await self._call(create_and_start, what=f"starting service {spec.name} from {spec.image}"))

    async def image_ports(self, image: str) -> tuple[int, ...]:
        def ports() -> tuple[int, ...]:
            exposed = (self.client.images.get(image).attrs.get("Config") or {}).get("ExposedPorts") or {}
            found = []
            for key in exposed:
                port, _, proto = str(key).partition("/")
                if (proto or "tcp") == "tcp" and port.isdigit():
                    found.append(int(port))
            return tuple(sorted(set(found)))

        return tuple(await self._call(ports, what=f"inspecting {image}"))  # type: ignore[arg-type]

    async def container_state(self, container_id: str) -> ContainerState:
        def state() -> ContainerState:
            try:
                found = self.client.containers.get(container_id).inspect().get("State") or {}
            except NotFound:
                return ContainerState(False)
            except APIError as exc:  # removed between the lookup and the inspect: Podman answers 500 then
                if "no such container" in str(exc):
                    return ContainerState(False)
                raise
            return ContainerState(bool(found.get("Running")), found.get("ExitCode"), str(found.get("Error") or ""),
                                  bool(found.get("OOMKilled")))

        return await self._call(state, what=f"inspecting {container_id[:12]}")  # type: ignore[return-value]

    async def follow_logs(self, container_id: str, on_output: OutputCallback) -> None:
        """The container's output as it writes it, until it stops (the stream ends then)."""
        loop = asyncio.get_running_loop()

        def deliver(stream: str, data: bytes) -> None:
            try:
                loop.call_soon_threadsafe(on_output, stream, data)
            except RuntimeError:  # the loop closed while a removed container's stream drained
                pass

        def follow() -> None:
            params = {"follow": "true", "stdout": "true", "stderr": "true"}
            response = self.client.api.get(f"/containers/{container_id}/logs", params=params, stream=True)
            if response.status_code == 404:
                return
            response.raise_for_status()
            read_frames(response.raw, deliver)
            response.close()

        # A thread of its own, not asyncio's pool: a stream lasts as long as its job, and a few of them would
        # otherwise take every worker the queue's and the steps' calls need.
        ended: asyncio.Future[None] = loop.create_future()

        def run() -> None:
            try:
                follow()
                outcome: BaseException | None = None
            except (PodmanError, OSError) as exc:
                outcome = EngineError(f"following the log of {container_id[:12]}: {exc}")
            except BaseException as exc:  # a bug: surfaced on the loop, not lost in the thread
                outcome = exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_settle, ended, outcome)

        threading.Thread(target=run, name=f"forgeci-logs-{container_id[:12]}", daemon=True).start()
        await ended

    async def remove_pod(self, pod_id: str) -> None:
        """SIGKILL every container of the pod first: `pod rm -f` alone waits 10 s for a member ignoring SIGTERM."""

        def remove() -> None:
            killed = self.client.api.post(f"/pods/{pod_id}/kill", params={"signal": "SIGKILL"})
            if killed.status_code == 404:
                return
            # 409: nothing in the pod runs (any more); the removal below is all that is left.
            removed = self.client.api.delete(f"/pods/{pod_id}", params={"force": "true"})
            if removed.status_code not in (200, 404):
                removed.raise_for_status()

        await self._call(remove, what=f"removing pod {pod_id[:12]}")

    async def job_pods(self) -> dict[str, int]:
        def listing() -> dict[str, int]:
            found: dict[str, int] = {}
            for pod in self.client.pods.list(filters={"label": f"{INSTANCE_LABEL}={self.instance}"}):
                try:
                    found[str(pod.id)] = int((pod.attrs.get("Labels") or {}).get(JOB_LABEL, ""))
                except ValueError:
                    continue
            return found

        return dict(await self._call(listing, what="listing job pods"))  # type: ignore[arg-type]

    async def has_bash(self, container_id: str, image: str) -> bool:
        """Always True: the step's own shell looks for bash (step_command), which saves an exec per job."""
        return True

    def step_command(self, run: str, bash: bool) -> list[str]:
        """The step's argv: bash -eo pipefail when the image has bash, else sh -e (decided in the container, in
        the same exec). `podman exec` starts each process as its own session and group leader
        (pid = pgid = sid), so recording $$ before exec-ing the shell lets `stop_step` signal the
        whole group, background children included."""
        shell = ('if command -v bash >/dev/null 2>&1; then exec bash -eo pipefail -c "$1"; fi; exec sh -e -c "$1"'
                 if bash else 'exec sh -e -c "$1"')
        return ["sh", "-c", f"echo $$ > {STEP_PID_FILE}; {shell}", "forgeci-step", run]

    async def exec(
        self, container_id: str, argv: Sequence[str], env: Mapping[str, str], on_output: OutputCallback,
        workdir: str = "/workspace",
    ) -> int:
        """Run argv in the container, calling on_output(stream, bytes) on the loop as output arrives; exit code."""
        loop = asyncio.get_running_loop()

        def deliver(stream: str, data: bytes) -> None:
            loop.call_soon_threadsafe(on_output, stream, data)

        def run() -> int:
            api = self.client.api
            body = {"AttachStdout": True, "AttachStderr": True, "AttachStdin": False, "Tty": False,
                    "Cmd": list(argv), "Env": [f"{k}={v}" for k, v in env.items()], "WorkingDir": workdir}
            created = api.post(f"/containers/{container_id}/exec", data=json.dumps(body))
            created.raise_for_status()
            exec_id = created.json()["Id"]
            started = api.post(f"/exec/{exec_id}/start", data=json.dumps({"Detach": False, "Tty": False}),
                               stream=True)
            started.raise_for_status()
            read_frames(started.raw, deliver)
            started.close()
            inspected = api.get(f"/exec/{exec_id}/json")
            inspected.raise_for_status()
            code = inspected.json().get("ExitCode")
            return int(code) if code is not None else -1

        return int(await self._call(run, what=f"exec in container {container_id[:12]}"))

    async def stop_step(self, container_id: str, sig: str = "TERM") -> None:
        """Signal the running step's process group (the API cannot signal one exec session)."""
        script = f'p=$(cat {STEP_PID_FILE} 2>/dev/null) && kill -{sig} -- -"$p" 2>/dev/null; true'
        try:
            await self.exec(container_id, ["sh", "-c", script], {}, lambda s, d: None)
        except EngineError as exc:
            log.warning("could not signal the step in %s: %s", container_id[:12], exc)

    async def remove(self, container_id: str) -> None:
        """Kill and remove a container; an already-gone container is fine."""
        with phase("container removal"):
            await self._remove(container_id)

    async def _remove(self, container_id: str) -> None:

        def remove() -> None:  # one request (podman-py's get().remove() inspects first)
            response = self.client.api.delete(f"/containers/{container_id}", params={"force": "true", "v": "true"})
            if response.status_code not in (200, 204, 404):
                response.raise_for_status()

        await self._call(remove, what=f"removing container {container_id[:12]}")

    async def job_containers(self) -> dict[str, int]:
        """Every job container of this instance: container id -> job id."""

        def listing() -> dict[str, int]:
            found: dict[str, int] = {}
            for container in self.client.containers.list(all=True, filters={"label": f"{INSTANCE_LABEL}={self.instance}"}):
                if container.attrs.get("IsInfra"):  # it has the pod's labels; it goes with its pod (job_pods)
                    continue
                try:
                    found[str(container.id)] = int(container.labels.get(JOB_LABEL, ""))
                except ValueError:
                    continue
            return found

        return dict(await self._call(listing, what="listing job containers"))  # type: ignore[arg-type]

    async def ping(self) -> bool:
        """True when the engine answers; a dead or missing service is False, never an exception."""
        try:
            return bool(await asyncio.to_thread(self.client.ping))
        except (PodmanError, OSError):
            return False

    async def inspect(self, container_id: str) -> dict[str, object]:
        def inspect() -> dict[str, object]:
            return dict(self.client.containers.get(container_id).inspect())

        return dict(await self._call(inspect, what=f"inspecting {container_id[:12]}"))  # type: ignore[arg-type]
