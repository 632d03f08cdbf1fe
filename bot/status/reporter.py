"""Commit statuses off the runner's path: job and pipeline events in, ordered, coalesced and retried posts to the
forges out.

A pipeline of one job has one status, on `server.status_context`, from its job's events (as before pipelines). A
pipeline of several has one per job (`{context}/{display}`, from the job's events) and its own on the context
(from its events, and refreshed as its jobs end): branch protection requires that one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from bot.errors import StatusError
from bot.status.base import CommitStatus, Poster
from bot.status.describe import describe, describe_pipeline, job_context
from runner.errors import JobNotFound, PipelineNotFound, QueueError
from runner.events import Event, EventBus, JobEvent, PipelineEvent
from runner.models import JobSpec, PipelineRecord, PipelineState
from runner.queue import Queue

log = logging.getLogger(__name__)

RETRY_BASE = 1.0  # seconds before the first retry of a failed post; doubles each time
RETRY_CAP = 60.0
MAX_ATTEMPTS = 8  # failed posts of one update (server errors, network) before it is given up
MAX_RATE_WAITS = 20  # rate-limit waits of one update: the forge said when, so they are not counted as failures
MAX_RATE_WAIT = 3600.0  # never park a forge longer than this on one answer
DRAIN_SECONDS = 5.0  # on shutdown, how long pending posts may still go out
REMEMBERED = 4096  # pipelines whose size and last own status the reporter keeps in mind


@dataclass(frozen=True)
class _Update:
    # (pipeline id, event sequence): a newer pipeline, or a later event of the same one, wins — whichever of its
    # jobs the event is about, so a lower job's later update of a shared context is never dropped. None: a job
    # of no pipeline, which belongs to the newest pipeline the channel has seen.
    pipeline: int | None
    seq: int
    spec: JobSpec
    status: CommitStatus


class _Channel:
    """The updates of one commit's status (forge, target, sha, context), posted one at a time, newest only."""

    def __init__(self) -> None:
        self.newest: tuple[int, int] = (0, 0)
        self.pending: _Update | None = None
        self.task: asyncio.Task[None] | None = None

    def offer(self, update: _Update) -> bool:
        """Keep `update` unless something newer was already taken; True when kept."""
        order = (self.newest[0] if update.pipeline is None else update.pipeline, update.seq)
        if order <= self.newest:
            return False
        self.newest = order
        self.pending = update  # coalesce: whatever was waiting is older and is never posted
        return True

    def take(self) -> _Update | None:
        update, self.pending = self.pending, None
        return update


class _Memory(OrderedDict[int, object]):
    """A bounded map, least recently stored first out: the reporter's notes on pipelines it has seen."""

    def put(self, key: int, value: object) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > REMEMBERED:
            self.popitem(last=False)


class StatusReporter:
    """Subscribes to the runtime's events and posts each webhook pipeline's and job's commit status to its forge.

    Nothing here can slow or fail a job: the runner only publishes events; posting happens in this reporter's
    tasks, one per commit, and a forge that is slow, down or rate-limiting only delays its own statuses.
    """

    def __init__(
        self, queue: Queue, events: EventBus, posters: Mapping[str, Poster], *, context: str, public_url: str,
        retry_base: float = RETRY_BASE, retry_cap: float = RETRY_CAP, max_attempts: int = MAX_ATTEMPTS,
        clock: Callable[[], float] = time.time, feed: Callable[[], AsyncIterator[Event]] | None = None,
    ) -> None:
        self.queue = queue
        self.events = events
        # Where the events come from: this process's bus (SQLite: one coordinator), or the database's feed of
        # state changes (bot/status/feed.py: several coordinators on PostgreSQL, one of them posting).
        self.feed = feed
        self.posters = dict(posters)
        self.context = context
        self.public_url = public_url
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.max_attempts = max_attempts
        self._clock = clock
        self._seq = itertools.count(1)
        self._channels: dict[tuple[str, str, str, str], _Channel] = {}
        self._paused_until: dict[str, float] = {}  # forge -> wall-clock end of its rate limit
        self._consumer: asyncio.Task[None] | None = None
        self._sizes = _Memory()  # pipeline id -> how many jobs it has (fixed once planned)
        self._said = _Memory()  # pipeline id -> the (state, description) last offered on its own context

    async def start(self) -> None:
        """Subscribe now, so no event published after start() returns is missed."""
        if not self.posters:
            return  # no forge to post to: not even a subscriber
        before = self.events.subscriber_count
        self._consumer = asyncio.create_task(self._consume(), name="forgeci-status-reporter")
        for _ in range(0 if self.feed is not None else 100):  # the subscription registers at the generator's first step, a loop turn away
            if self.events.subscriber_count != before or self._consumer.done():
                break
            await asyncio.sleep(0)

    async def stop(self, drain: float = DRAIN_SECONDS) -> None:
        """Stop listening; let queued posts go out for up to `drain` seconds, then drop the rest."""
        if self._consumer is not None:
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)
        tasks = [c.task for c in self._channels.values() if c.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=drain)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def idle(self) -> None:
        """Wait until every update offered so far has been posted or given up (for tests and shutdown)."""
        while tasks := [c.task for c in self._channels.values() if c.task is not None]:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- events -> updates ------------------------------------------------------------------------------

    async def _consume(self) -> None:
        async for event in (self.feed() if self.feed is not None else self.events.subscribe()):
            try:
                if isinstance(event, PipelineEvent):
                    await self._on_pipeline_event(event)
                else:
                    await self._on_event(event)
            except Exception:  # one bad event must not stop the statuses of every other job
                log.exception("status reporter: event %s", _about(event))

    async def _on_event(self, event: JobEvent) -> None:
        if event.kind not in ("state", "step"):
            return
        seq = next(self._seq)
        try:
            job = await asyncio.to_thread(self.queue.get, event.job_id)
        except JobNotFound:
            return
        except QueueError as exc:
            log.warning("status reporter: cannot read job %d: %s", event.job_id, exc)
            return
        if job.state != event.state:
            return  # the job has moved on since: the event for its newer state follows (or came first)
        poster, target = self._poster(job.spec)
        if poster is None or target is None:
            return  # not a webhook job, or its forge has no credentials here
        pipeline = job.pipeline_id or _meta_pipeline(job.spec)  # a retried job: the pipeline it came from
        if pipeline is None or await self._size(pipeline) <= 1:  # one job: its status is the pipeline's
            status = describe(job, event.kind, event.data, context=self.context, public_url=self.public_url)
            self._offer(poster, target, _Update(pipeline, seq, job.spec, status))
            return
        context = job_context(self.context, job.display or job.spec.meta.get("job") or job.name or str(job.id))
        status = describe(job, event.kind, event.data, context=context, public_url=self.public_url)
        self._offer(poster, target, _Update(pipeline, seq, job.spec, status))
        if job.state.is_terminal and job.pipeline_id is not None:
            await self._refresh(job.pipeline_id, seq)  # one more of its jobs is done

    async def _on_pipeline_event(self, event: PipelineEvent) -> None:
        seq = next(self._seq)
        record = await self._pipeline(event.pipeline_id)
        if record is None or record.state != event.state:
            return  # gone, or moved on since: the event for its newer state follows (or came first)
        if record.state is PipelineState.planning and not event.data.get("error"):
            return  # just recorded: a one-job pipeline's first status is its job's "Queued", as ever
        if record.job_ids and await self._size(record.id) == 1:
            return  # its job's statuses are the pipeline's
        await self._post_pipeline(record, seq, event.data)

    async def _refresh(self, pipeline_id: int, seq: int) -> None:
        """Offer a running pipeline's own status again (a job of it changed state); its end comes as its event."""
        record = await self._pipeline(pipeline_id)
        if record is not None and not record.state.is_terminal:
            await self._post_pipeline(record, seq, {})

    async def _post_pipeline(self, record: PipelineRecord, seq: int, data: dict[str, object]) -> None:
        poster, target = self._poster(record.spec)
        if poster is None or target is None:
            return
        try:
            jobs = await asyncio.to_thread(self.queue.pipeline_jobs, record.id)
        except QueueError as exc:
            log.warning("status reporter: cannot read the jobs of pipeline %d: %s", record.id, exc)
            return
        status = describe_pipeline(record, jobs, data, context=self.context, public_url=self.public_url)
        said = (status.state, status.description)
        if self._said.get(record.id) == said:
            return  # nothing new (a job's start, or the same end told twice)
        self._said.put(record.id, said)
        self._offer(poster, target, _Update(record.id, seq, record.spec, status))

    async def _pipeline(self, pipeline_id: int) -> PipelineRecord | None:
        try:
            return await asyncio.to_thread(self.queue.pipeline, pipeline_id)
        except PipelineNotFound:
            return None
        except QueueError as exc:
            log.warning("status reporter: cannot read pipeline %d: %s", pipeline_id, exc)
            return None

    async def _size(self, pipeline_id: int) -> int:
        """How many jobs a pipeline has (0 while it is planning, or when it is gone)."""
        size = self._sizes.get(pipeline_id)
        if isinstance(size, int):
            return size
        record = await self._pipeline(pipeline_id)
        if record is None or not record.job_ids:
            return 0
        self._sizes.put(pipeline_id, len(record.job_ids))  # planned in one transaction: fixed from now on
        return len(record.job_ids)

    def _poster(self, spec: JobSpec) -> tuple[Poster | None, str | None]:
        poster = self.posters.get(spec.meta.get("forge", ""))
        return poster, poster.target(spec) if poster is not None else None

    def _offer(self, poster: Poster, target: str, update: _Update) -> None:
        key = (poster.forge, target, update.spec.sha or "", update.status.context)
        channel = self._channels.setdefault(key, _Channel())
        if channel.offer(update) and channel.task is None:
            channel.task = asyncio.create_task(self._drain(key, channel, poster),
                                               name=f"forgeci-status-{update.status.subject.replace(' ', '-')}")

    # -- posting ----------------------------------------------------------------------------------------

    async def _drain(self, key: tuple[str, str, str, str], channel: _Channel, poster: Poster) -> None:
        try:
            while (update := channel.take()) is not None:
                await self._deliver(channel, poster, update)
        finally:
            channel.task = None
            if channel.pending is None:
                self._channels.pop(key, None)

    async def _deliver(self, channel: _Channel, poster: Poster, update: _Update) -> None:
        """Post `update`, retrying with backoff; a newer update arriving meanwhile replaces it."""
        failures = rate_waits = 0
        while True:
            await self._wait_for(poster.forge)
            try:
                await poster.post(update.spec, update.status)
                return
            except StatusError as exc:
                what = f"{poster.forge} status of {update.status.subject} ({update.status.job_state})"
                if not exc.retryable:
                    log.warning("%s not posted: %s", what, exc)
                    return
                if exc.rate_limited and rate_waits < MAX_RATE_WAITS:
                    rate_waits += 1
                    until = min(exc.retry_at or self._clock(), self._clock() + MAX_RATE_WAIT)
                    self._paused_until[poster.forge] = max(self._paused_until.get(poster.forge, 0.0), until)
                    log.info("%s: rate limited, waiting %.0fs", what, until - self._clock())
                else:
                    failures += 1
                    if failures >= self.max_attempts:
                        log.warning("%s given up after %d attempts: %s", what, failures, exc)
                        return
                    delay = min(self.retry_cap, self.retry_base * 2 ** (failures - 1))
                    if exc.retry_at is not None:
                        delay = max(delay, min(exc.retry_at - self._clock(), MAX_RATE_WAIT))
                    log.info("%s failed (%s); retrying in %.1fs", what, exc, delay)
                    await asyncio.sleep(delay)
            newer = channel.take()
            if newer is not None:
                update, failures, rate_waits = newer, 0, 0  # the older state is obsolete: post the newer one

    async def _wait_for(self, forge: str) -> None:
        """Hold every post to a forge while it rate-limits us."""
        while (wait := self._paused_until.get(forge, 0.0) - self._clock()) > 0:
            await asyncio.sleep(min(wait, 5.0))


def _meta_pipeline(spec: JobSpec) -> int | None:
    """The pipeline a job was planned in, from its meta (a retried job keeps it; its row has no pipeline)."""
    value = spec.meta.get("pipeline", "")
    return int(value) if value.isdigit() else None


def _about(event: Event) -> str:
    if isinstance(event, PipelineEvent):
        return f"{event.state} of pipeline {event.pipeline_id}"
    return f"{event.kind} of job {event.job_id}"
