"""The Podman engine: the private API service, job containers, streamed execs, stopping steps (its command line
is runner/podman_cli.py; nothing else in forgeci talks to Podman)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from podman import PodmanClient
from podman.errors import APIError, ImageNotFound, NotFound, PodmanError

from runner.engine import ContainerSpec, OutputCallback
from runner.errors import EngineError, ImageMissing
from runner.podman_cli import CA_IN_CONTAINER, CA_VARIABLES, podman_cli, remove_tree_as, with_ca
from runner.podman_user import PodmanUser

__all__ = ["CA_IN_CONTAINER", "CA_VARIABLES", "ContainerSpec", "EngineError", "ImageMissing", "PodmanEngine",
           "PodmanService", "podman_cli"]

log = logging.getLogger(__name__)

JOB_LABEL = "forgeci.job"
# Several forgeci instances (a server, a `forgeci run`, tests) share one Podman user's containers: each
# labels its own with its data dir so that start-up reaping never touches another instance's jobs.
INSTANCE_LABEL = "forgeci.instance"
STEP_PID_FILE = "/tmp/.forgeci-step.pid"
STREAMS = {1: "stdout", 2: "stderr"}



def parse_ulimit(text: str) -> dict[str, object]:
    """`nofile=20000:20000` -> the Docker-style dict podman-py wants."""
    name, _, values = text.partition("=")
    soft, _, hard = values.partition(":")
    return {"Name": name.strip(), "Soft": int(soft), "Hard": int(hard or soft)}


class PodmanService:
    """`podman system service` on a private socket, run as the Podman user; restarted when it dies."""

    def __init__(self, user: PodmanUser, state_dir: Path) -> None:
        self.user = user
        self.state_dir = state_dir
        self.socket_path = state_dir / "podman.sock"
        self.pid_file = state_dir / "service.pid"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self, timeout: float = 15.0) -> None:
        """Start the service (after stopping one a crashed run left behind) and wait until it answers."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.user.chown(self.state_dir)
        self.reap_stale()
        self.socket_path.unlink(missing_ok=True)
        self.user.ensure_runtime_dir()
        argv = self.user.command(["podman", "system", "service", "--time=0", self.url])
        # A session of its own: one killpg stops runuser and podman together, and Ctrl-C in a
        # terminal running `forgeci serve` does not kill the engine under running jobs.
        self._proc = subprocess.Popen(
            argv, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, cwd="/", env=None if self.user.switch else {**os.environ, **self.user.env()},
        )
        self.pid_file.write_text(str(self._proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EngineError(f"podman system service exited with {self._proc.returncode} at start")
            if self._answers():
                return
            time.sleep(0.05)
        self.stop()
        raise EngineError(f"podman system service did not answer on {self.socket_path} within {timeout:.0f}s")

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1)
                sock.connect(str(self.socket_path))
                sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                return sock.recv(12).startswith(b"HTTP/1.")
        except OSError:
            return False

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None and self._answers()

    def ensure(self) -> bool:
        """Restart the service if it died; True when it had to."""
        if self.alive():
            return False
        log.warning("the Podman service is not answering; restarting it")
        self.stop()
        self.start()
        return True

    def stop(self, grace: float = 5.0) -> None:
        if self._proc is not None:
            _kill_group(self._proc.pid, grace, self._proc)
            self._proc = None
        self.pid_file.unlink(missing_ok=True)

    def reap_stale(self) -> None:
        """Stop a service whose pid file a crashed run left, if that pid is still our service."""
        try:
            pid = int(self.pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if str(self.socket_path).encode() in cmdline:
            log.info("stopping a Podman service left by an earlier run (pid %d)", pid)
            _kill_group(pid, 5.0)


def _kill_group(pid: int, grace: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                break
        elif not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc is not None:
        proc.wait()
    # runuser may exit before the podman it started: wait until the whole group is gone.
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)


WATCHDOG_INTERVAL = 2.0  # seconds between liveness checks of the Podman service we started


class PodmanEngine:
    """Job containers through podman-py against our own `podman system service` (or `podman_url`'s);
    every blocking call runs in a worker thread."""

    def __init__(self, user: PodmanUser, *, instance: str, url: str = "", state_dir: Path | None = None) -> None:
        if not url and state_dir is None:
            raise ValueError("PodmanEngine needs a service url or a state_dir to start one in")
        self.user = user
        self.instance = instance
        self.service = PodmanService(user, state_dir) if not url and state_dir is not None else None
        self.url = url or (self.service.url if self.service else "")
        self.client = PodmanClient(base_url=self.url, timeout=60)
        self._has_bash: dict[str, bool] = {}
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.service is not None:
            await asyncio.to_thread(self.service.start)
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
        """False on rootless cgroup-v1 hosts, where Podman ignores memory and pids limits."""
        host = (await self.info()).get("host", {})
        rootless = bool(host.get("security", {}).get("rootless", True))
        return not (rootless and host.get("cgroupVersion") == "v1")

    async def image_exists(self, image: str) -> bool:
        return bool(await self._call(self.client.images.exists, image, what=f"looking up {image}"))

    async def start_job_container(self, spec: ContainerSpec) -> str:
        """Create and start the job's long-lived container; steps run in it as execs."""
        if not await self.image_exists(spec.image):
            raise ImageMissing(f"image {spec.image} is not in the Podman user's storage "
                               f"(build it with `forgeci image build`, or fix the pipeline's image)")
        env, mounts = with_ca(spec)
        kwargs: dict[str, object] = dict(
            image=spec.image, command=["sleep", "infinity"], init=True, detach=True,
            name=f"forgeci-job-{spec.job_id}-{os.urandom(3).hex()}",
            labels={JOB_LABEL: str(spec.job_id), INSTANCE_LABEL: self.instance}, mounts=mounts, environment=env,
            working_dir="/workspace", no_new_privileges=True, network_mode=spec.network,
            ulimits=[parse_ulimit(u) for u in spec.ulimits],
        )
        if spec.limits:
            if spec.memory:
                kwargs["mem_limit"] = spec.memory
            if spec.pids_limit:
                kwargs["pids_limit"] = spec.pids_limit

        def create_and_start() -> str:
            container = self.client.containers.create(**kwargs)
            try:
                container.start()
            except Exception:
                container.remove(force=True)
                raise
            return str(container.id)

        return str(await self._call(create_and_start, what=f"starting a container from {spec.image}"))

    async def has_bash(self, container_id: str, image: str) -> bool:
        if image not in self._has_bash:
            code = await self.exec(container_id, ["sh", "-c", "command -v bash"], {}, lambda s, d: None)
            self._has_bash[image] = code == 0
        return self._has_bash[image]

    def step_command(self, run: str, bash: bool) -> list[str]:
        """The step's argv. `podman exec` starts each process as its own session and group leader
        (pid = pgid = sid), so recording $$ before exec-ing the shell lets `stop_step` signal the
        whole group, background children included."""
        shell = 'exec bash -eo pipefail -c "$1"' if bash else 'exec sh -e -c "$1"'
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
            raw = started.raw
            # Multiplexed frames: 1 byte stream, 3 padding, 4 bytes big-endian length. Reading frame by
            # frame (never a large buffer) delivers each write of the step as soon as it is made.
            while True:
                header = raw.read(8)
                if len(header) < 8:
                    break
                kind, length = struct.unpack(">BxxxL", header)
                data = raw.read(length) if length else b""
                if data:
                    deliver(STREAMS.get(kind, "stdout"), data)
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

        def remove() -> None:
            try:
                self.client.containers.get(container_id).remove(force=True, v=True)
            except NotFound:
                pass
            except APIError as exc:
                if exc.status_code != 404:
                    raise

        await self._call(remove, what=f"removing container {container_id[:12]}")

    async def job_containers(self) -> dict[str, int]:
        """Every job container of this instance: container id -> job id."""

        def listing() -> dict[str, int]:
            found: dict[str, int] = {}
            for container in self.client.containers.list(all=True, filters={"label": f"{INSTANCE_LABEL}={self.instance}"}):
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
