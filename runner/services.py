"""A job's service containers: its pod and hosts file, readiness before the first step, service logs, deaths."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from config.durations import format_duration
from config.errors import ConfigError
from config.pipeline import pipeline_from_dict
from config.services import SERVICE_NAME, Service
from runner.engine import ContainerRefused, ContainerSpec, Engine, EngineError, ImageMissing, PodSpec, \
    ServiceContainerSpec
from runner.layout import DataLayout
from runner.logs import JobLog, LogLine, Masker, read_log
from runner.models import JobSpec, JobState, Outcome

__all__ = ["PORT_PROBE", "Box", "JobPod", "Solo", "declared_services", "hosts_file_text", "pending_service_log",
           "reap_pods", "service_log", "service_log_names", "service_tail"]

log = logging.getLogger(__name__)

SETTLE = 0.2  # a service with neither `ready` nor exposed ports is ready once it has run this long
POLL_FIRST, POLL_MAX = 0.1, 1.0  # seconds between readiness checks: quick at first, then at most this
PROBE_TIMEOUT = 10.0  # one run of `ready` may take this long (so a hanging check cannot outlast ready_timeout)
TAIL = 50  # a failed service's last log lines, copied into the job log
DRAIN = 2.0  # seconds a killed service's log stream gets to deliver its last lines before its log is closed
WATCH_POLL = 1.0  # seconds between state checks of a service whose log stream could not be followed

# Whether every TCP port in "$@" (4 hex digits, as the kernel writes them) has a listening socket in the pod's
# network namespace: /proc/net/tcp{,6} read with sh builtins only, so any image with a POSIX shell can run it.
# A listening socket is what makes a connection succeed: the kernel accepts it into the backlog at once.
PORT_PROBE = ('listening() { for f in /proc/net/tcp /proc/net/tcp6; do [ -r "$f" ] || continue; '
              'while read -r _ a _ s _; do [ "$s" = 0A ] && [ "${a##*:}" = "$1" ] && return 0; done < "$f"; '
              'done; return 1; }; for p; do listening "$p" || exit 1; done')
PROBE_NAME = "forgeci-ports"  # $0 of the port probe: how the fake engine tells it from other execs


class Box(Protocol):
    """Where a job's steps run: its container alone, or in a pod with its services. Removed as one."""

    container_id: str

    async def remove(self) -> None:
        """Kill and remove the job's container(s); EngineError leaves the box to be removed again later."""


@dataclass
class Solo:
    """A job's container of its own (a job without services)."""

    engine: Engine
    container_id: str

    async def remove(self) -> None:
        if self.container_id:  # "" until it started
            await self.engine.remove(self.container_id)


def hosts_file_text(hostname: str, names: Iterable[str]) -> str:
    """/etc/hosts of every container of a pod: localhost, the pod's host name and each service on 127.0.0.1.

    Podman 4.3 writes no --add-host entries into the members of a pod without a network, and refuses them on
    members, so forgeci writes the file itself and bind-mounts it read-only in all of them.
    """
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", f"127.0.0.1\t{hostname}"]
    lines += [f"127.0.0.1\t{name}" for name in names]
    return "\n".join(lines) + "\n"


def service_log_names(layout: DataLayout, job_id: int) -> list[str]:
    """The services whose logs the job kept, by name (service_log gives each one's file)."""
    folder = layout.service_logs(job_id)
    return sorted(p.stem for p in folder.glob("*.log")) if folder.is_dir() else []


def service_log(layout: DataLayout, job_id: int, name: str) -> Path | None:
    """The kept log of service `name` of job `job_id` (read it with runner.logs.read_log), or None when the job
    kept none by that name. A name from a request is checked first, so that it never leaves the job's folder."""
    if not SERVICE_NAME.fullmatch(name):
        return None
    path = layout.service_log_file(job_id, name)
    return path if path.is_file() else None


def declared_services(spec: JobSpec) -> list[str]:
    """The services a job runs with, by name, as its pipeline declares them: the one-job pipeline the planner
    gave it (or the one submitted with it), read as the executor reads it. [] for a job that reads its pipeline
    file only after its checkout: until then only the kept logs say which services it has."""
    if spec.pipeline is None:
        return []
    try:
        return sorted(pipeline_from_dict(spec.pipeline, "the job's pipeline").services)
    except ConfigError:  # it fails in its plan phase, before any service starts
        return []


def pending_service_log(layout: DataLayout, spec: JobSpec, job_id: int, name: str) -> Path | None:
    """Where the log of service `name` goes once it starts, for a service the job declares but has not started
    (read_log reads a missing file as no lines yet); None for a name the job has no service by."""
    if not SERVICE_NAME.fullmatch(name) or name not in declared_services(spec):
        return None
    return layout.service_log_file(job_id, name)


def service_tail(path: Path, count: int = TAIL) -> list[LogLine]:
    """The last `count` lines a service wrote (forgeci's own lines about it left out)."""
    return list(deque((line for line in read_log(path) if line.stream != "system"), maxlen=count))


async def reap_pods(engine: Engine, layout: DataLayout, running: set[int]) -> list[int]:
    """At start-up: remove the pods (and the hosts files) of jobs nobody runs; their job ids."""
    removed = []
    for pod_id, job_id in (await engine.job_pods()).items():
        if job_id not in running:
            log.info("removing leftover pod %s of job %d", pod_id[:12], job_id)
            await engine.remove_pod(pod_id)
            removed.append(job_id)
    for path in layout.pods.glob("*.hosts") if layout.pods.is_dir() else ():
        if not path.stem.isdigit() or int(path.stem) not in running:
            path.unlink(missing_ok=True)
    return removed


@dataclass(frozen=True)
class Limits:
    """What the runner settings give every container of a job."""

    network: str
    memory: str = ""
    pids_limit: int = 0
    ulimits: tuple[str, ...] = ()
    limits: bool = True


@dataclass
class RunningService:
    """One started service: its container, its log, and whether its output stream has ended (it stopped)."""

    name: str
    spec: Service
    container_id: str
    log: JobLog
    started: float  # monotonic
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    watcher: asyncio.Task[None] | None = None
    closed: bool = False  # its log: a stream still draining after removal writes nothing more

    def output(self, stream: str, data: bytes) -> None:
        if not self.closed:
            self.log.write(self.name, stream, data)


class JobPod:
    """A job's pod: its services, then the job's container in it; `remove()` takes everything away.

    Service output goes to `layout.service_log_file(job, name)` as it is written (it survives a crash of
    forgeci); a service that stops before `remove()` is reported in the job's log with its last lines.
    """

    def __init__(self, engine: Engine, layout: DataLayout, job_id: int, attempt: int, services: Mapping[str, Service],
                 joblog: JobLog, masker: Masker) -> None:
        self.engine = engine
        self.layout = layout
        self.job_id = job_id
        self.attempt = attempt
        self.specs = dict(services)
        self.joblog = joblog
        self.masker = masker
        self.pod_id = ""
        self.container_id = ""
        self.services: dict[str, RunningService] = {}
        self.hosts_file = layout.pods / f"{job_id}.hosts"
        self._waiting = True  # until the services are ready: a stop then is the readiness check's to report
        self._closing = False

    # -- start --------------------------------------------------------------------------------------------------

    async def start(self, container: ContainerSpec, limits: Limits) -> Outcome | None:
        """The pod, every service and the job's container; an Outcome when the pipeline's services cannot start.
        EngineError (the engine itself) propagates: an infrastructure fault."""
        images = list(dict.fromkeys(s.image for s in self.specs.values()))
        exists = await asyncio.gather(*(self.engine.image_exists(image) for image in images))
        missing = [image for image, found in zip(images, exists) if not found]
        if missing:
            names = ", ".join(n for n, s in self.specs.items() if s.image in missing)
            return self._fail(f"image {missing[0]} of service {names} does not exist: the pipeline's services "
                              f"name an image this runner does not have (build it, or change the pipeline)")
        hostname = f"forgeci-job-{self.job_id}"
        self.hosts_file.write_text(hosts_file_text(hostname, self.specs))
        self.hosts_file.chmod(0o644)  # the Podman user's containers read it
        self.pod_id = await self.engine.start_pod(PodSpec(self.job_id, limits.network, hostname))
        # All at once: the start-up of one container overlaps the others' (and a service's settle time).
        results = await asyncio.gather(
            *(self._start_service(name, spec, limits) for name, spec in self.specs.items()),
            self._start_job(dataclasses.replace(container, pod=self.pod_id, hosts_file=self.hosts_file)),
            return_exceptions=True)
        for result in results:  # what a start raised (an infrastructure fault) before the pipeline's faults
            if isinstance(result, BaseException):
                raise result
        return next((r for r in results if isinstance(r, Outcome)), None)

    async def _start_job(self, spec: ContainerSpec) -> None:
        self.container_id = await self.engine.start_job_container(spec)

    async def _start_service(self, name: str, spec: Service, limits: Limits) -> Outcome | None:
        path = self.layout.service_log_file(self.job_id, name)
        service_log = JobLog(path, self.job_id, None, self.masker)
        service_log.system(f"service {name}: {spec.image}, attempt {self.attempt}")
        try:
            container_id = await self.engine.start_service(ServiceContainerSpec(
                job_id=self.job_id, name=name, image=spec.image, pod=self.pod_id, hosts_file=self.hosts_file,
                env=spec.env, command=spec.command, memory=limits.memory, pids_limit=limits.pids_limit,
                ulimits=limits.ulimits, limits=limits.limits))
        except (ContainerRefused, ImageMissing) as exc:
            service_log.close()
            return self._fail(f"service {name} could not start: {exc}")
        except BaseException:
            service_log.close()
            raise
        service = RunningService(name, spec, container_id, service_log, time.monotonic())
        service.watcher = asyncio.create_task(self._watch(service), name=f"forgeci-service-{self.job_id}-{name}")
        self.services[name] = service
        self.joblog.system(f"service {name} started from {spec.image} ({container_id[:12]})")
        return None

    def _fail(self, message: str) -> Outcome:
        self.joblog.system(message)
        return Outcome(JobState.failure, message)

    # -- readiness ----------------------------------------------------------------------------------------------

    async def wait_ready(self, deadline: float, cancel: asyncio.Event) -> Outcome | None:
        """Until every service is ready (None), one stops or is not ready in time, the job's own deadline passes
        or the job is cancelled (an Outcome)."""
        checks = {asyncio.ensure_future(self._ready(s, deadline)) for s in self.services.values()}
        cancelled = asyncio.ensure_future(cancel.wait())
        pending: set[asyncio.Future[object]] = {*checks, cancelled}
        try:
            while checks & pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if cancelled in done:
                    self.joblog.system("cancelled while waiting for the services")
                    return Outcome(JobState.cancelled, "cancelled while waiting for the services")
                for finished in done:
                    outcome = finished.result()
                    if isinstance(outcome, Outcome):
                        return outcome
            # One that was ready and stopped while another was still getting ready: no step has run yet.
            for service in self.services.values():
                state = await self.engine.container_state(service.container_id) if service.stopped.is_set() else None
                if state is not None and not state.running:
                    return await self._stopped_early(service, state.exit_code, state.error)
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            self._waiting = False
        return None

    async def _ready(self, service: RunningService, deadline: float) -> Outcome | None:
        spec = service.spec
        until = min(service.started + spec.ready_timeout, deadline)
        ports = () if spec.ready is not None else await self.engine.image_ports(spec.image)
        how = (f"`{spec.ready}` exited 0" if spec.ready is not None
               else f"port{'s' if len(ports) > 1 else ''} {', '.join(map(str, ports))} listening" if ports
               else f"running after {format_duration(SETTLE)}: no `ready` and no exposed ports")
        interval, said = POLL_FIRST, ""
        while True:
            ok, said = await self._probe(service, ports, until)
            if ok:
                took = format_duration(time.monotonic() - service.started)
                self.joblog.system(f"service {service.name} ready in {took} ({how})")
                return None
            state = await self.engine.container_state(service.container_id)
            if not state.running:
                return await self._stopped_early(service, state.exit_code, state.error)
            now = time.monotonic()
            if now >= until:
                return await self._not_ready(service, deadline, said)
            await asyncio.sleep(min(interval, until - now))
            interval = min(interval * 2, POLL_MAX)

    async def _probe(self, service: RunningService, ports: tuple[int, ...], until: float) -> tuple[bool, str]:
        """One readiness check, and what it printed; an exec the engine refuses (a stopped container) is False."""
        if service.spec.ready is None and not ports:
            wait = service.started + SETTLE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            return (await self.engine.container_state(service.container_id)).running, ""
        out = bytearray()

        def collect(stream: str, data: bytes) -> None:
            del stream
            if len(out) < 4096:
                out.extend(data[:4096])

        if service.spec.ready is not None:
            target, argv = service.container_id, ["sh", "-c", service.spec.ready]
        else:  # checked in the job's container: the same network namespace, and its image has a shell
            target, argv = self.container_id, ["sh", "-c", PORT_PROBE, PROBE_NAME, *(f"{p:04X}" for p in ports)]
        limit = max(0.1, min(PROBE_TIMEOUT, until - time.monotonic()))
        try:
            code = await asyncio.wait_for(self.engine.exec(target, argv, {}, collect, workdir="/"), limit)
        except (EngineError, TimeoutError):
            return False, out.decode(errors="replace")
        text = out.decode(errors="replace").strip()
        return code == 0, f"exit {code}" + (f": {text.splitlines()[-1][:200]}" if text else "")

    async def _stopped_early(self, service: RunningService, code: int | None, error: str) -> Outcome:
        why = f"exited with code {code}" if code is not None else "is gone"
        detail = f" ({error})" if error else ""
        return await self._with_tail(service, f"service {service.name} {why} before it was ready{detail}",
                                     stopped=True)

    async def _not_ready(self, service: RunningService, deadline: float, said: str) -> Outcome:
        spec = service.spec
        if deadline < service.started + spec.ready_timeout and time.monotonic() >= deadline:
            self.joblog.system(f"the job's time limit passed while waiting for service {service.name}")
            return Outcome(JobState.timeout, f"job exceeded its time limit waiting for service {service.name}")
        check = f"`{spec.ready}`" if spec.ready is not None else "its exposed ports"
        last = f"; last check: {said}" if said else ""
        return await self._with_tail(service, f"service {service.name} was not ready within "
                                              f"{format_duration(spec.ready_timeout)} (waiting for {check}{last})")

    async def _with_tail(self, service: RunningService, message: str, stopped: bool = False) -> Outcome:
        """The message and the service's last lines in the job log; the message as the job's error."""
        await self._report(service, message, stopped)
        return Outcome(JobState.failure, message)

    async def _report(self, service: RunningService, message: str, stopped: bool) -> None:
        self.joblog.system(message)
        if stopped:  # what it wrote just before it stopped is still on its way until its log stream ends
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(service.stopped.wait(), DRAIN)
        service.log.flush(service.name)
        tail = await asyncio.to_thread(service_tail, service.log.path)
        if tail:
            self.joblog.system(f"last {len(tail)} log line{'s' if len(tail) != 1 else ''} of service "
                               f"{service.name}:")
        for line in tail:
            self.joblog.system(f"{service.name} | {line.text}")

    # -- while the job runs -------------------------------------------------------------------------------------

    async def _watch(self, service: RunningService) -> None:
        """Keep the service's output in its log until it stops; a stop before remove() (and after readiness) is
        reported in the job's log."""
        try:
            await self.engine.follow_logs(service.container_id, service.output)
            state = await self.engine.container_state(service.container_id)
            while state.running and not self._closing:  # the stream broke, the service did not stop
                await asyncio.sleep(WATCH_POLL)
                state = await self.engine.container_state(service.container_id)
        except EngineError as exc:
            if not self._closing:  # while the pod goes, its containers vanishing under the watch is expected
                log.warning("job %d: service %s: %s", self.job_id, service.name, exc)
            return
        finally:
            service.stopped.set()
        if not self._closing and not self._waiting:
            service.log.system(f"service {service.name} stopped (exit code {state.exit_code})")
            await self._report(service, f"service {service.name} stopped during the job (exit code "
                                        f"{state.exit_code}{', out of memory' if state.oom_killed else ''})", True)

    # -- removal ------------------------------------------------------------------------------------------------

    async def remove(self) -> None:
        """Kill and remove the pod (services first, so none holds the removal up), then close the service logs."""
        self._closing = True
        if self.pod_id:
            await self.engine.remove_pod(self.pod_id)
            self.pod_id = ""
        watchers = [s.watcher for s in self.services.values() if s.watcher is not None]
        if watchers:
            await asyncio.wait(watchers, timeout=DRAIN)
        for service in self.services.values():
            if service.watcher is not None:
                service.watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await service.watcher
            service.closed = True
            service.log.close()
        self.services.clear()
        self.hosts_file.unlink(missing_ok=True)
