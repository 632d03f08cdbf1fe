"""One leased job's line to the coordinator: its log lines and step events in order, its heartbeat, its result.

Everything the executor reports goes into an outbox that one sender delivers in order, retrying while the
coordinator is away; log lines carry their numbers, so a batch sent again is not duplicated. The result goes
last, once the outbox is empty. A refused lease (409) stops the job: a newer attempt owns it.

An agent with several coordinators (runner.agent.client) may move to one whose file of the job's log ends before
the lines it sends next (the earlier ones went to the coordinator it left): that one answers 422 "log gap", and the
channel sends it the missing lines of this attempt from the agent's own copy of the log, then goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.agent.client import (
    AgentClient,
    AgentError,
    LeaseLost,
    TokenRefused,
    Unreachable,
)
from runner.agent.wire import MAX_BATCH, outcome_to_dict, step_to_dict
from runner.logs import LogLine, read_log
from runner.models import Job, Outcome, StepResult

log = logging.getLogger(__name__)
HEARTBEAT_MAX = 5.0  # seconds between heartbeats at most: a cancel reaches the job within this
BATCH_BYTES = 512 * 1024  # of line text in one log call (the API takes bodies up to 1 MiB)


class JobChannel:
    """The StepReporter (and the executor's on_line) of a job an agent runs, and its lease keeper."""

    def __init__(self, client: AgentClient, job: Job, lease: str, lease_seconds: float, cancel: asyncio.Event,
                 local_log: Path | None = None, log_base: int = 0) -> None:
        self.client = client
        self.local_log = local_log  # this attempt's lines as the executor wrote them here (after log_base)
        self.log_base = log_base  # the lines up to it are the coordinator's (earlier attempts, its own notes)
        self._caught_up: set[int] = set()  # the batches (by first line) a catch-up was tried for
        self.job = job
        self.lease = lease
        self.lease_seconds = lease_seconds
        self.cancel = cancel
        self.lost: str | None = None  # why the job is no longer ours (its lease or token was refused)
        self.cancel_requested = False
        self._outbox: deque[tuple[str, Any]] = deque()
        self._more = asyncio.Event()
        self._closing = False
        self._sender = asyncio.create_task(self._send(), name=f"forgeci-agent-send-{job.id}")
        self._beater = asyncio.create_task(self._beat(), name=f"forgeci-agent-beat-{job.id}")

    # -- what the executor reports ----------------------------------------------------------------------------

    def on_line(self, line: LogLine) -> None:
        self._put("line", {"n": line.n, "t": line.t, "s": line.step, "o": line.stream, "x": line.text})

    def checked_out(self, job: Job, sha: str) -> None:
        self._put("step", {"event": "sha", "sha": sha})

    def step_started(self, job: Job, index: int, name: str, total: int) -> None:
        self._put("step", {"event": "started", "index": index, "name": name, "total": total})

    def step_finished(self, job: Job, result: StepResult, total: int) -> None:
        self._put("step", {"event": "finished", "result": step_to_dict(result), "total": total})

    def _put(self, kind: str, item: Any) -> None:
        if self.lost is None:
            self._outbox.append((kind, item))
            self._more.set()

    # -- the end ----------------------------------------------------------------------------------------------

    async def finish(self, outcome: Outcome, requeue: str | None = None,
                     service_logs: Mapping[str, Path] | None = None) -> str | None:
        """Deliver what is buffered and the services' kept logs, then the result; the state the coordinator
        recorded (None: lease lost). The heartbeat goes on until the result is in."""
        self._closing = True
        self._more.set()
        await asyncio.gather(self._sender, return_exceptions=True)
        for name, path in (service_logs or {}).items():
            if self.lost is None:
                await self._ship_service_log(name, path)
        self._beater.cancel()
        await asyncio.gather(self._beater, return_exceptions=True)
        if self.lost is not None:
            log.warning("job %d: not reported: %s", self.job.id, self.lost)
            return None
        body = {"lease": self.lease, "outcome": outcome_to_dict(outcome), **({"requeue": requeue} if requeue else {})}
        try:
            _, data = await self.client.call(f"/jobs/{self.job.id}/result", body)
        except (LeaseLost, TokenRefused) as exc:
            log.warning("job %d: result refused: %s", self.job.id, exc)
            return None
        return str(data.get("state")) if isinstance(data, dict) else None

    async def _ship_service_log(self, name: str, path: Path) -> None:
        """A service's kept log, numbered on from what the coordinator's file of it holds (asked once, so that a
        resend keeps its numbers)."""
        url = f"/jobs/{self.job.id}/service-log"
        try:
            _, data = await self.client.call(url, {"lease": self.lease, "name": name, "lines": []})
            base = int(data["last"])
            batch: list[Any] = []
            size = 0
            for line in [*read_log(path), None]:
                if line is not None:
                    batch.append({"n": line.n + base, "t": line.t, "s": line.step, "o": line.stream, "x": line.text})
                    size += len(line.text)
                if batch and (line is None or len(batch) >= MAX_BATCH or size > BATCH_BYTES):
                    await self.client.call(url, {"lease": self.lease, "name": name, "lines": batch})
                    batch, size = [], 0
        except (LeaseLost, TokenRefused) as exc:
            self._lose(str(exc))
        except AgentError as exc:
            log.error("job %d: the log of service %s refused: %s", self.job.id, name, exc)

    async def abandon(self) -> None:
        self._closing = True
        self._outbox.clear()
        for task in (self._sender, self._beater):
            task.cancel()
        await asyncio.gather(self._sender, self._beater, return_exceptions=True)

    # -- internals --------------------------------------------------------------------------------------------

    def _lose(self, why: str) -> None:
        if self.lost is None:
            log.warning("job %d: %s; stopping it", self.job.id, why)
            self.lost = why
            self._outbox.clear()
            self.cancel.set()

    def _batch(self) -> list[Any]:
        """The log lines at the front of the outbox, left there until they are delivered."""
        lines: list[Any] = []
        size = 0
        for kind, item in self._outbox:
            if kind != "line" or len(lines) >= MAX_BATCH or (lines and size + len(item["x"]) > BATCH_BYTES):
                break
            size += len(item["x"])
            lines.append(item)
        return lines

    async def _send(self) -> None:
        while self.lost is None:
            if not self._outbox:
                if self._closing:
                    return
                self._more.clear()
                await self._more.wait()
                continue
            kind, item = self._outbox[0]
            try:
                if kind == "line":
                    lines = self._batch()
                    await self.client.call(f"/jobs/{self.job.id}/log", {"lease": self.lease, "lines": lines})
                    for _ in lines:
                        self._outbox.popleft()
                else:
                    await self.client.call(f"/jobs/{self.job.id}/step", {"lease": self.lease, **item})
                    self._outbox.popleft()
            except (LeaseLost, TokenRefused) as exc:
                self._lose(str(exc))
            except AgentError as exc:  # a report the coordinator refuses for good: drop it, go on
                if kind == "line" and exc.status == 422 and await self._catch_up(int(item["n"])):
                    continue  # the coordinator has the lines before the batch now: send it again
                log.error("job %d: %s refused: %s", self.job.id, kind, exc)
                self._outbox.popleft()

    async def _catch_up(self, first: int) -> bool:
        """Send a coordinator whose log of the job ends before line `first` the lines it lacks, from this agent's
        copy of the attempt's log; False when that copy does not reach back to them (lines up to log_base are the
        other coordinator's alone) or one catch-up for this batch was tried already."""
        if self.local_log is None or first in self._caught_up:
            return False
        self._caught_up.add(first)
        url = f"/jobs/{self.job.id}/log"
        try:
            _, data = await self.client.call(url, {"lease": self.lease, "lines": []})  # answers its last line
            last = int(data["last"])
            missing = [line for line in read_log(self.local_log, max(last, self.log_base)) if line.n < first]
            if last < self.log_base or [line.n for line in missing] != list(range(last + 1, first)):
                return False
            log.info("job %d: the coordinator's log ends at line %d: sending lines %d-%d again", self.job.id, last,
                     last + 1, first - 1)
            for start in range(0, len(missing), MAX_BATCH):
                await self.client.call(url, {"lease": self.lease, "lines": [
                    {"n": line.n, "t": line.t, "s": line.step, "o": line.stream, "x": line.text}
                    for line in missing[start:start + MAX_BATCH]]})
            return True
        except (LeaseLost, TokenRefused) as exc:
            self._lose(str(exc))
            return True  # the send loop ends: the job is no longer ours
        except (AgentError, KeyError, TypeError, ValueError) as exc:
            log.warning("job %d: catching the coordinator's log up failed: %s", self.job.id, exc)
            return False

    async def _beat(self) -> None:
        """Every third of the lease (at least every 5 s: the answer carries a cancel): extend it; a cancel the
        coordinator reports stops the job."""
        every = max(0.5, min(HEARTBEAT_MAX, self.lease_seconds / 3))
        while self.lost is None:
            await asyncio.sleep(every)
            try:
                _, data = await self.client.call(f"/jobs/{self.job.id}/heartbeat", {"lease": self.lease},
                                                 give_up_after=every, timeout=every)
            except (LeaseLost, TokenRefused) as exc:
                self._lose(str(exc))
            except (Unreachable, AgentError) as exc:
                log.warning("job %d: heartbeat: %s", self.job.id, exc)
            else:
                if isinstance(data, dict) and data.get("cancel") and not self.cancel_requested:
                    self.cancel_requested = True
                    log.info("job %d: cancelled on the coordinator", self.job.id)
                    self.cancel.set()


async def quietly(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
