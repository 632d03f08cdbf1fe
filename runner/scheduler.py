"""The cron scheduler: each `[[schedules]]` entry makes a pipeline (event `schedule`) when due.

The next due time lives in the queue database and is claimed with the pipeline it makes in one transaction
(runner.queue.schedules): two ticks racing, or two processes, fire a due time once, and a restart neither repeats
nor loses one. A server that was down over several due times runs the schedule once when it is back, and says so
in its log. The clock and the sleep are injectable, so tests move time instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from config.schedules import ScheduleSpec, by_name
from config.settings import Settings
from runner.control import JobControl
from runner.errors import QueueError
from runner.models import JobSpec, PipelineState
from runner.queue import Fired, Queue, ScheduleRow

log = logging.getLogger(__name__)

MAX_SLEEP = 60.0  # seconds between looks at the table at most (a schedule added by another process shows up)
MIN_SLEEP = 0.05
MAX_COUNTED = 1000
LATE = 60.0  # seconds past its due time after which a run is late: the server was down (or stopped) meanwhile  # missed due times counted for the log line; past this, "1000 or more"
EVENT = "schedule"
SCHEDULE_META = "schedule"  # a scheduled pipeline's meta: the schedule's name


def group_of(name: str) -> str:
    """A schedule's own concurrency group: a push to the same branch neither cancels it nor waits for it."""
    return f"schedule:{name}"


def schedule_spec(schedule: ScheduleSpec, settings: Settings) -> JobSpec:
    """The trigger of a schedule's pipelines: the tip of its ref, its env, its own group."""
    priority = schedule.priority if schedule.priority is not None else settings.queue.default_priority
    return JobSpec(repo=schedule.repo, ref=schedule.ref, event=EVENT, priority=priority,
                   concurrency_group=group_of(schedule.name), env=dict(schedule.env),
                   meta={SCHEDULE_META: schedule.name})


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


def missed(schedule: ScheduleSpec, due: float, now: float) -> int:
    """How many due times from `due` to `now` (both included) one run now stands for, counting at most
    MAX_COUNTED."""
    count, at = 0, due
    while at is not None and at <= now and count < MAX_COUNTED:
        count += 1
        at = schedule.next_due(at)
    return count


class Scheduler:
    """Fires the server's schedules through the queue; `tick` once, `run` for ever."""

    def __init__(self, queue: Queue, control: JobControl, settings: Settings, *,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        self.queue = queue
        self.control = control
        self.settings = settings
        self.schedules = by_name(settings.schedules)
        self.clock = clock
        self.sleep = sleep

    async def sync(self) -> None:
        """Store the settings' schedules: a new or changed one is due next after now; the others keep their due
        time, so one that passed while the server was down still fires (once)."""
        now = self.clock()
        wanted = [(s.name, s.fingerprint(), s.next_due(now)) for s in self.schedules.values()]
        await asyncio.to_thread(self.queue.sync_schedules, wanted)

    async def tick(self) -> list[Fired]:
        """Fire every schedule whose due time has come; the pipelines made."""
        now = self.clock()
        fired = []
        for row in await asyncio.to_thread(self.queue.schedules):
            schedule = self.schedules.get(row.name)
            if schedule is None or row.next_due is None or row.next_due > now:
                continue
            if (found := await self._fire(schedule, row, now)) is not None:
                fired.append(found)
        return fired

    async def _fire(self, schedule: ScheduleSpec, row: ScheduleRow, now: float) -> Fired | None:
        assert row.next_due is not None
        spec = schedule_spec(schedule, self.settings)
        next_due = schedule.next_due(now)  # after now, not after the missed one: no burst after downtime
        found = await asyncio.to_thread(self.queue.fire_schedule, row.name, row.next_due, next_due, spec)
        if found is None:
            return None  # another tick (or process) fired it
        count = missed(schedule, row.next_due, now)
        if count > 1:
            more = "or more " if count >= MAX_COUNTED else ""
            log.warning("schedule %s: the server was down over %d %sdue times since %s; running it once now "
                        "(pipeline %d)", row.name, count, more, _when(row.next_due), found.pipeline_id)
        elif now - row.next_due > LATE:
            log.warning("schedule %s: the server was down at its due time %s; running it now (pipeline %d)",
                        row.name, _when(row.next_due), found.pipeline_id)
        else:
            log.info("schedule %s: due at %s, pipeline %d", row.name, _when(row.next_due), found.pipeline_id)
        self._announce(found.pipeline_id)
        return found

    async def run_now(self, name: str) -> int:
        """Run schedule `name` now, by hand (`POST /schedules/{name}/run`): its pipeline's id. KeyError when the
        settings have no such schedule."""
        schedule = self.schedules[name]
        pipeline_id = await asyncio.to_thread(self.queue.run_schedule, name, schedule.fingerprint(),
                                              schedule.next_due(self.clock()), schedule_spec(schedule, self.settings))
        log.info("schedule %s: run by hand, pipeline %d", name, pipeline_id)
        self._announce(pipeline_id)
        return pipeline_id

    def _announce(self, pipeline_id: int) -> None:
        self.control.publish_pipeline(pipeline_id, PipelineState.planning)
        if self.control.planner is not None:
            self.control.planner.wake()

    async def run(self) -> None:
        """Sync, then tick whenever the next due time comes (looking at least every MAX_SLEEP seconds)."""
        await self.sync()  # also forgets the schedules the settings no longer have
        if not self.schedules:
            return
        while True:
            try:
                await self.tick()
                dues = [row.next_due for row in await asyncio.to_thread(self.queue.schedules)
                        if row.next_due is not None and row.name in self.schedules]
            except QueueError as exc:
                log.error("scheduler: %s", exc)
                dues = []
            wait = MAX_SLEEP if not dues else min(MAX_SLEEP, min(dues) - self.clock())
            await self.sleep(max(MIN_SLEEP, wait))
