"""An in-process container engine for tests: steps programmed with their output, exit codes, delays and hangs.

Like buildbot's worker fakes: a test says what each step does (`engine.on(run, Script(...))`) or must do
(`engine.expect(...)`, then `engine.check()`), and the executor, worker pool, API and dashboard run against it
with no Podman and no Podman user. Unprogrammed steps behave as `engine.default` (exit 0, no output).
Services are scripted the same way (`engine.service(name, ServiceScript(...))`: its output, when its `ready`
check and its ports answer, when it exits); unscripted ones are ready at once and run until removed.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import string
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.engine import (
    ContainerRefused,
    ContainerSpec,
    ContainerState,
    EngineError,
    ImageMissing,
    OutputCallback,
    PodSpec,
    ServiceContainerSpec,
)
from runner.podman_user import PodmanUser
from runner.services import PROBE_NAME

FAKE_IMAGE = "localhost/fake-job:latest"
STEP = "fake-step"  # argv[0] of a step: what step_command makes, so that exec can tell steps from probes
TERM_EXIT, KILL_EXIT = 143, 137  # what a shell reports for a process ended by SIGTERM / SIGKILL


@dataclass(frozen=True)
class Script:
    """What one run of a step does. Lines may name the step's environment as `$NAME` or `${NAME}`."""

    exit_code: int = 0
    lines: Sequence[str] = ()  # to stdout, one write each
    stderr: Sequence[str] = ()  # to stderr, after the stdout lines
    interval: float = 0.0  # seconds before each line after the first
    delay: float = 0.0  # seconds after the output before the step exits
    hang: bool = False  # never exits by itself: only a signal (stop_step) or removing the container ends it
    ignore_term: bool = False  # SIGTERM does nothing; SIGKILL ends it
    files: Mapping[str, str | bytes] = field(default_factory=dict)  # written into the workspace (relative paths)
    links: Mapping[str, str] = field(default_factory=dict)  # symlinks made in the workspace: path -> target
    output: Mapping[str, str] = field(default_factory=dict)  # KEY=VALUE lines appended to $FORGECI_OUTPUT


@dataclass(frozen=True)
class ServiceScript:
    """What a service does from its start. Its `ready` check exits 0, and its ports listen, once it is ready."""

    lines: Sequence[str] = ()  # to its log (stdout) at its start
    ready_after: float = 0.0  # seconds after its start before it is ready
    never_ready: bool = False
    exits_after: float | None = None  # it stops by itself this long after its start, with exit_code
    exit_code: int = 1
    last_words: Sequence[str] = ()  # to its log (stderr) as it exits by itself
    refuse: str = ""  # the runtime refuses to start it (a command that does not exist), saying this


@dataclass
class FakeService:
    """A started service container: its output so far, and whether (and how) it ended."""

    id: str
    spec: ServiceContainerSpec
    script: ServiceScript
    started: float
    output: list[tuple[str, bytes]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    exit_code: int | None = None
    probes: int = 0  # runs of its `ready` check

    @property
    def running(self) -> bool:
        return self.exit_code is None

    @property
    def ready(self) -> bool:
        return (self.running and not self.script.never_ready
                and time.monotonic() >= self.started + self.script.ready_after)

    def write(self, stream: str, text: str) -> None:
        self.output.append((stream, (text + "\n").encode()))
        self.changed.set()

    def exit(self, code: int, last_words: Sequence[str] = ()) -> None:
        if self.running:
            for line in last_words:
                self.write("stderr", line)
            self.exit_code = code
            self.changed.set()


@dataclass
class FakePod:
    id: str
    spec: PodSpec
    members: set[str] = field(default_factory=set)


@dataclass
class Exec:
    """A step as it ran: where, with what environment, and when (monotonic seconds)."""

    container_id: str
    job_id: int
    run: str
    env: dict[str, str]
    started: float
    ended: float | None = None
    exit_code: int | None = None
    signals: list[str] = field(default_factory=list)


@dataclass
class _Running:
    script: Script
    record: Exec
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    code: int | None = None

    def signal(self, sig: str) -> None:
        self.record.signals.append(sig)
        if sig == "KILL" or not self.script.ignore_term:
            self.code = KILL_EXIT if sig == "KILL" else TERM_EXIT
            self.ended.set()

    async def sleep(self, seconds: float) -> bool:
        """Wait `seconds`; True when a signal ended the step meanwhile."""
        try:
            await asyncio.wait_for(self.ended.wait(), seconds)
        except TimeoutError:
            return False
        return True


@dataclass
class FakeContainer:
    id: str
    spec: ContainerSpec
    running: _Running | None = None


class FakeEngine:
    """Implements runner.engine.Engine in memory. Its `user` is this process's account (no switching)."""

    def __init__(self, *, images: Sequence[str] = (FAKE_IMAGE,), limits_apply: bool = True,
                 instance: str = "fake") -> None:
        self.instance = instance
        self.user = PodmanUser.current()
        self.images = set(images)
        self.limits_apply = limits_apply
        self.default = Script()
        self.down = False  # True: every call fails as a dead engine's would, ping() is False
        self.started = self.closed = False
        self.containers: dict[str, FakeContainer] = {}
        self.created: list[ContainerSpec] = []  # every container ever started, in order
        self.execs: list[Exec] = []  # every step ever run, in order
        self.removed_trees: list[Path] = []
        self.pods: dict[str, FakePod] = {}
        self.services: dict[str, FakeService] = {}  # every service ever started, by container id
        self.ports: dict[str, tuple[int, ...]] = {}  # image -> the TCP ports it exposes
        self._service_scripts: dict[str, ServiceScript] = {}
        self._programs: dict[str, list[Script]] = {}
        self._expected: dict[str, int] = {}  # run -> how many more times it must run
        self._ids = itertools.count(1)

    # -- programming the fake -------------------------------------------------------------------------------

    def on(self, run: str, *scripts: Script) -> None:
        """Runs of step `run` behave as `scripts`, in order; the last one repeats."""
        if not scripts:
            raise ValueError("on() needs at least one Script")
        self._programs[run] = list(scripts)

    def expect(self, run: str, *scripts: Script) -> None:
        """Like on(), and check() fails unless `run` ran at least len(scripts) times."""
        self.on(run, *(scripts or (self.default,)))
        self._expected[run] = self._expected.get(run, 0) + max(1, len(scripts))

    def service(self, name: str, script: ServiceScript) -> None:
        """Services named `name` (in any job) behave as `script`."""
        self._service_scripts[name] = script

    def check(self) -> None:
        """Every expected step ran, and no container or pod is left."""
        missing = {run: n for run, n in self._expected.items() if n > 0}
        assert not missing, f"expected steps that did not run (run: times left): {missing}"
        assert not self.containers, f"containers left behind: {sorted(self.containers)}"
        assert not self.pods, f"pods left behind: {sorted(self.pods)}"

    def runs(self, job_id: int | None = None) -> list[str]:
        return [e.run for e in self.execs if job_id is None or e.job_id == job_id]

    def _script(self, run: str) -> Script:
        if run in self._expected:
            self._expected[run] -= 1
        program = self._programs.get(run)
        if not program:
            return self.default
        return program.pop(0) if len(program) > 1 else program[0]

    # -- runner.engine.Engine ---------------------------------------------------------------------------------

    def _up(self, what: str) -> None:
        if self.down:
            raise EngineError(f"{what}: the fake engine is down")

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    async def alive(self) -> bool:
        return not self.down

    async def ping(self) -> bool:
        return not self.down

    async def cgroup_limits_apply(self) -> bool:
        self._up("podman info")
        return self.limits_apply

    async def image_exists(self, image: str) -> bool:
        self._up(f"looking up {image}")
        return image in self.images

    async def image_id(self, image: str) -> str:
        self._up(f"inspecting {image}")
        return f"fake{abs(hash(image)):x}" if image in self.images else ""

    async def start_job_container(self, spec: ContainerSpec) -> str:
        self._up(f"starting a container from {spec.image}")
        if spec.image not in self.images:
            raise ImageMissing(f"image {spec.image} is not in the fake engine's images {sorted(self.images)}")
        if spec.pod and spec.pod not in self.pods:
            raise EngineError(f"starting a container in pod {spec.pod[:12]}: no such pod")
        container = FakeContainer(self._new_id(), spec)
        self.containers[container.id] = container
        self.created.append(spec)
        if spec.pod:
            self.pods[spec.pod].members.add(container.id)
        return container.id

    def _new_id(self) -> str:
        return f"fake{next(self._ids):08d}{'0' * 56}"

    async def has_bash(self, container_id: str, image: str) -> bool:
        return True

    def step_command(self, run: str, bash: bool) -> list[str]:
        return [STEP, run]

    async def exec(
        self, container_id: str, argv: Sequence[str], env: Mapping[str, str], on_output: OutputCallback,
        workdir: str = "/workspace",
    ) -> int:
        self._up(f"exec in container {container_id[:12]}")
        service = self.services.get(container_id)
        if service is not None:
            return self._ready_check(service, argv)
        container = self.containers.get(container_id)
        if container is None:
            raise EngineError(f"exec in container {container_id[:12]}: no such container")
        if len(argv) > 3 and argv[3] == PROBE_NAME:
            return self._port_check(container, argv[4:])
        if list(argv[:1]) != [STEP]:
            return 0  # a probe of the executor's own, not a step
        run = argv[1]
        script = self._script(run)
        record = Exec(container_id, container.spec.job_id, run, dict(env), time.monotonic())
        self.execs.append(record)
        running = container.running = _Running(script, record)
        try:
            record.exit_code = await self._play(running, container, env, on_output)
            return record.exit_code
        finally:
            record.ended = time.monotonic()
            container.running = None

    async def _play(self, running: _Running, container: FakeContainer, env: Mapping[str, str],
                    on_output: OutputCallback) -> int:
        script = running.script
        for index, line in enumerate(script.lines):
            if index and script.interval and await running.sleep(script.interval):
                return running.code or TERM_EXIT
            on_output("stdout", (string.Template(line).safe_substitute(env) + "\n").encode())
        for line in script.stderr:
            on_output("stderr", (string.Template(line).safe_substitute(env) + "\n").encode())
        for rel, text in script.files.items():
            target = container.spec.workspace / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(text) if isinstance(text, bytes) else target.write_text(text)
        for rel, link in script.links.items():
            target = container.spec.workspace / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(link)
        if script.output:
            target = container.spec.workspace / env["FORGECI_OUTPUT"].removeprefix("/workspace/")
            with open(target, "a") as out:
                out.writelines(f"{key}={value}\n" for key, value in script.output.items())
        if script.hang:
            await running.ended.wait()
            return running.code or KILL_EXIT
        if script.delay and await running.sleep(script.delay):
            return running.code or TERM_EXIT
        return script.exit_code

    async def stop_step(self, container_id: str, sig: str = "TERM") -> None:
        container = self.containers.get(container_id)
        if container is not None and container.running is not None:
            container.running.signal(sig)

    async def remove(self, container_id: str) -> None:
        self._up(f"removing container {container_id[:12]}")
        self._kill(container_id)

    def _kill(self, container_id: str) -> None:
        container = self.containers.pop(container_id, None)
        if container is not None and container.running is not None:
            container.running.signal("KILL")
        service = self.services.get(container_id)
        if service is not None:
            service.exit(KILL_EXIT)

    async def job_containers(self) -> dict[str, int]:
        self._up("listing job containers")
        return {cid: c.spec.job_id for cid, c in self.containers.items()}

    async def inspect(self, container_id: str) -> dict[str, Any]:
        container = self.containers.get(container_id)
        if container is None:
            raise EngineError(f"inspecting {container_id[:12]}: no such container")
        return {"Id": container_id, "Config": {"Image": container.spec.image, "Env": dict(container.spec.env)}}

    async def remove_tree(self, path: Path) -> None:
        self.removed_trees.append(path)
        await asyncio.to_thread(shutil.rmtree, path)

    # -- pods and services ------------------------------------------------------------------------------------

    def _ready_check(self, service: FakeService, argv: Sequence[str]) -> int:
        """Its `ready` check (or any other exec in it): 0 once it is ready; a stopped container refuses execs."""
        if not service.running:
            raise EngineError(f"exec in container {service.id[:12]}: container is not running")
        service.probes += 1
        return 0 if service.ready else 1

    def _port_check(self, container: FakeContainer, hex_ports: Sequence[str]) -> int:
        """The port probe in a job's container: 0 when a ready service of its pod exposes every port."""
        wanted = {int(p, 16) for p in hex_ports}
        listening = {port for s in self.services.values() if s.spec.pod == container.spec.pod and s.ready
                     for port in self.ports.get(s.spec.image, ())}
        return 0 if wanted <= listening else 1

    async def start_pod(self, spec: PodSpec) -> str:
        self._up(f"creating the pod of job {spec.job_id}")
        pod = FakePod(f"pod{next(self._ids):08d}{'0' * 57}", spec)
        self.pods[pod.id] = pod
        return pod.id

    async def start_service(self, spec: ServiceContainerSpec) -> str:
        self._up(f"starting service {spec.name} from {spec.image}")
        if spec.image not in self.images:
            raise ImageMissing(f"image {spec.image} is not in the fake engine's images {sorted(self.images)}")
        if spec.pod not in self.pods:
            raise EngineError(f"starting service {spec.name}: no such pod")
        script = self._service_scripts.get(spec.name, ServiceScript())
        if script.refuse:
            raise ContainerRefused(script.refuse)
        service = FakeService(self._new_id(), spec, script, time.monotonic())
        self.services[service.id] = service
        self.containers[service.id] = FakeContainer(service.id, spec)  # type: ignore[arg-type]
        self.pods[spec.pod].members.add(service.id)
        for line in script.lines:
            service.write("stdout", line)
        if script.exits_after is not None:
            asyncio.get_running_loop().call_later(script.exits_after, service.exit, script.exit_code,
                                                  script.last_words)
        return service.id

    async def image_ports(self, image: str) -> tuple[int, ...]:
        self._up(f"inspecting {image}")
        return self.ports.get(image, ())

    async def container_state(self, container_id: str) -> ContainerState:
        self._up(f"inspecting {container_id[:12]}")
        service = self.services.get(container_id)
        if service is not None:
            return ContainerState(service.running, service.exit_code)
        return ContainerState(container_id in self.containers)

    async def follow_logs(self, container_id: str, on_output: OutputCallback) -> None:
        self._up(f"following the log of {container_id[:12]}")
        service = self.services.get(container_id)
        sent = 0
        while service is not None:
            service.changed.clear()
            for stream, data in service.output[sent:]:
                on_output(stream, data)
            sent = len(service.output)
            if not service.running:
                return
            await service.changed.wait()

    async def remove_pod(self, pod_id: str) -> None:
        self._up(f"removing pod {pod_id[:12]}")
        pod = self.pods.pop(pod_id, None)
        for member in pod.members if pod is not None else ():
            self._kill(member)

    async def job_pods(self) -> dict[str, int]:
        self._up("listing job pods")
        return {pod_id: pod.spec.job_id for pod_id, pod in self.pods.items()}
