"""The delivery loop: the outbox's pipeline ends fanned out to the [[notify]] targets, each message sent with
retries and backoff, off the runner's and the API's path.

Everything durable is in the outbox (runner.queue.outbox): a restart finds the pending rows again and goes on;
an attempt under way has pushed its row's time on, so one cut short by a crash is retried after that. A message
that failed its last retry (or that its endpoint refused for good) is dropped with a log line, and /metrics counts
it. Each delivery has its own timeout, and at most PARALLEL run at once: a slow endpoint holds one slot, never the
loop, the runner or the API.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import aiohttp

from bot.notify import discord, email, slack, webhook
from bot.notify.base import DeliveryError
from bot.notify.message import Message, branch_of, build_message, masker_for
from config.notify import NotifyTarget, named_targets
from config.settings import Settings, env_value
from runner.errors import PipelineNotFound
from runner.events import EventBus, PipelineEvent
from runner.layout import DataLayout
from runner.queue import Notification, Queue
from runner.repos import parse_repo

log = logging.getLogger(__name__)

POLL = 2.0  # seconds between looks at the outbox when nothing wakes the loop (rows due after a backoff)
PARALLEL = 16  # deliveries under way at once
BATCH = 64
SWEEP_BATCH = 1000  # pipeline ends per round without targets (rows only swept: one transaction for a burst)
LEASE_SLACK = 30.0  # an attempt's row is not due again before its timeout and this much more
MAX_BACKOFF = 3600.0
SWEEP_AGAIN = 60.0  # seconds before an outbox row that could not be fanned out is tried again
TERMINAL = frozenset({"success", "failure", "error", "cancelled"})


def retry_delay(target: NotifyTarget, attempt: int, retry_after: float | None = None) -> float:
    """Seconds before attempt `attempt` + 1: backoff doubled per attempt, at most an hour, at least what the
    endpoint asked for."""
    delay = min(MAX_BACKOFF, target.backoff * 2 ** max(0, attempt - 1))
    return max(delay, retry_after or 0.0)


class Notifier:
    """Follows the runtime's pipeline events and the outbox; delivers what is due."""

    def __init__(self, queue: Queue, layout: DataLayout, events: EventBus, settings: Settings,
                 environ: Mapping[str, str]) -> None:
        self.queue, self.layout, self.events, self.settings = queue, layout, events, settings
        self.environ = dict(environ)
        self.targets = named_targets(settings.notify)
        self.masker = masker_for(settings, self.environ)
        self.dropped = 0  # since start, also in the log; /metrics counts the outbox's rows
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(PARALLEL)
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        for name, target in self.targets.items():
            for variable in (target.url_env, target.secret_env, target.user_env, target.password_env):
                if variable and env_value(variable, self.environ) is None:
                    log.warning("notify target %s: its variable %s is not set; its messages will be dropped",
                                name, variable)
        self._session = aiohttp.ClientSession()
        self._tasks = [asyncio.create_task(self._run(), name="notify")]
        if self.targets:  # without targets the outbox is only swept (its rows fan out to nothing): no subscriber
            self._tasks.append(asyncio.create_task(self._follow(), name="notify-events"))

    async def stop(self) -> None:
        """Stop at once: an attempt cut short is retried by the next start (its row is still pending)."""
        for task in [*self._tasks, *self._inflight.values()]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._inflight.values(), return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def wake(self) -> None:
        self._wake.set()

    async def _follow(self) -> None:
        async for event in self.events.subscribe():
            if isinstance(event, PipelineEvent) and event.state in TERMINAL:
                self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()  # before the reads: a wake-up during the round is not lost
            try:
                wait = await self._next_wait(await self._round())
            except Exception:  # the database is busy or gone for a moment: look again later
                log.exception("notifications: cannot read the outbox")
                wait = POLL
            if wait <= 0:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass

    async def _next_wait(self, full: bool) -> float:
        """Seconds until the next round. Without targets, a pipeline's end only needs its row swept: one sweep per
        POLL (a burst of cancelled pipelines is thousands of rows; polling for them at once cost the webhook
        path). With targets: at once after a full batch; else until the next row's time, or, when what is due is
        already under way (deliveries waiting for a slot), until a delivery ends or a pipeline does (_follow)."""
        if not self.targets:
            return 0.0 if full else POLL
        if full:
            return 0.0
        next_at = await asyncio.to_thread(self.queue.next_notification_at)
        if next_at is None:
            return POLL
        if next_at > time.time():
            return min(POLL, next_at - time.time())
        return POLL if self._inflight else 0.0  # due and not under way: a row that came in meanwhile

    async def _round(self) -> bool:
        """Fan out and start what is due; True when the batch was full and the round got somewhere (more may be
        due; a round that could start nothing, every slot taken, waits for one to free)."""
        batch = BATCH if self.targets else SWEEP_BATCH
        due = await asyncio.to_thread(self.queue.due_notifications, batch)
        rows = [row for row in due if row.id not in self._inflight]
        ends = [row for row in rows if row.target is None]
        made = await self._fan_out(ends) if ends else []
        started = 0
        for item in [*(row for row in rows if row.target is not None), *made]:
            if item.id not in self._inflight and len(self._inflight) < PARALLEL * 4:
                task = asyncio.create_task(self._deliver(item), name=f"notify-{item.id}")
                self._inflight[item.id] = task
                task.add_done_callback(lambda _, key=item.id: self._delivery_ended(key))
                started += 1
        return len(due) == batch and bool(ends or started)

    def _delivery_ended(self, notification_id: int) -> None:
        self._inflight.pop(notification_id, None)
        self._wake.set()  # a slot is free: the rows waiting for one are due

    async def _fan_out(self, ends: list[Notification]) -> list[Notification]:
        """The round's pipeline ends fanned out in one thread hop and one transaction (a burst of superseded
        pipelines: one commit, not one per row); if that fails, each alone, so one bad row never holds up the
        others (it is looked at again in a minute)."""
        try:
            return await asyncio.to_thread(self._fan_out_all, ends)
        except Exception:
            if len(ends) == 1:
                log.exception("notifications: cannot fan out outbox row %d", ends[0].id)
                await asyncio.to_thread(self.queue.notification_failed, ends[0].id, "fan-out failed", SWEEP_AGAIN)
                return []
        made = []
        for row in ends:
            made += await self._fan_out([row])
        return made

    def _fan_out_all(self, ends: list[Notification]) -> list[Notification]:
        return self.queue.fan_out_many([(row.id, self._wanted(row)) for row in ends])

    def _wanted(self, row: Notification) -> list[tuple[str, str]]:
        """The (target, kind) pairs that want a pipeline's end; none without targets (and no pipeline read)."""
        if not self.targets:
            return []
        try:
            pipeline = self.queue.pipeline(row.pipeline_id)
        except PipelineNotFound:
            return []
        try:
            slug = parse_repo(pipeline.repo).slug
        except ValueError:
            slug = pipeline.repo
        branch = branch_of(pipeline.ref)
        return [(name, t.kind) for name, t in self.targets.items() if t.wants(row.event, slug, branch)]

    async def _deliver(self, row: Notification) -> None:
        async with self._slots:
            target = self.targets.get(row.target or "")
            if target is None:
                await self._drop(row, row.attempts, f"target {row.target!r} is no longer in [[notify]]")
                return
            if not await asyncio.to_thread(self.queue.begin_attempt, row.id, target.timeout + LEASE_SLACK):
                return
            attempt = row.attempts + 1
            try:
                message = await asyncio.to_thread(self._message, row, target)
                await asyncio.wait_for(self._send(target, row, message), target.timeout + 5.0)
            except asyncio.CancelledError:  # a shutdown: due again at once for the next start
                self.queue.notification_failed(row.id, "interrupted by a shutdown", 0.0)
                raise
            except DeliveryError as exc:
                await self._failed(row, target, attempt, str(exc), exc.permanent, exc.retry_after)
            except TimeoutError:
                await self._failed(row, target, attempt, f"no answer within {target.timeout:g}s", False, None)
            except PipelineNotFound:
                await self._drop(row, attempt, "its pipeline is gone (pruned)")
            except Exception as exc:  # a bug or an unexpected reply: retried like a network fault, and logged
                log.exception("notification %d to %s: unexpected failure", row.id, row.target)
                await self._failed(row, target, attempt, f"{type(exc).__name__}", False, None)
            else:
                await asyncio.to_thread(self.queue.notification_delivered, row.id)
                log.info("notification %d (pipeline %d %s) delivered to %s", row.id, row.pipeline_id, row.event,
                         row.target)

    def _message(self, row: Notification, target: NotifyTarget) -> Message:
        pipeline = self.queue.pipeline(row.pipeline_id)
        return build_message(self.queue, self.layout, pipeline, row.event,
                             public_url=self.settings.server.public_url, mask=self.masker,
                             log_lines=target.log_lines)

    def _secret(self, target: NotifyTarget, variable: str, what: str) -> str:
        value = env_value(variable, self.environ)
        if value is None:
            raise DeliveryError(f"its {what} variable {variable} is not set", permanent=True)
        return value

    async def _send(self, target: NotifyTarget, row: Notification, message: Message) -> None:
        assert self._session is not None
        delivery = str(row.id)
        if target.kind == "email":
            user = env_value(target.user_env, self.environ)
            password = env_value(target.password_env, self.environ)
            await email.send(target, message, delivery, user=user, password=password, timeout=target.timeout)
            return
        url = self._secret(target, target.url_env, "URL")
        if target.kind == "slack":
            await slack.send(self._session, url, message, target.timeout)
        elif target.kind == "discord":
            await discord.send(self._session, url, message, target.timeout)
        else:
            secret = self._secret(target, target.secret_env, "signing key")
            await webhook.send(self._session, url, secret, message, delivery, target.timeout)

    async def _failed(self, row: Notification, target: NotifyTarget, attempt: int, error: str, permanent: bool,
                      retry_after: float | None) -> None:
        if permanent or attempt > target.retries:
            await self._drop(row, attempt, error)
            return
        delay = retry_delay(target, attempt, retry_after)
        log.info("notification %d to %s failed (attempt %d of %d): %s; retried in %.0fs", row.id, row.target,
                 attempt, target.retries + 1, error, delay)
        await asyncio.to_thread(self.queue.notification_failed, row.id, error, delay)

    async def _drop(self, row: Notification, attempts: int, error: str) -> None:
        self.dropped += 1
        log.warning("notification %d (pipeline %d %s) to %s dropped after %d attempt(s): %s", row.id,
                    row.pipeline_id, row.event, row.target, attempts, error)
        await asyncio.to_thread(self.queue.notification_failed, row.id, error, None)


def prometheus(counts: Mapping[tuple[str, str], int]) -> str:
    """The outbox's messages by kind and state, as Prometheus text."""
    out = [("# HELP forgeci_notifications_total Notification messages by kind and state (pending, delivered, "
            "dropped), kept as long as their pipeline."), "# TYPE forgeci_notifications_total counter"]
    out += [f'forgeci_notifications_total{{kind="{kind}",state="{state}"}} {count}'
            for (kind, state), count in sorted(counts.items())]
    return "\n".join(out) + "\n"
