"""The notifier's loop waits for work: it does not poll the outbox while what is due is already under way, and
without targets it sweeps pipeline ends in large batches rather than every few milliseconds."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterable, Sequence
from typing import Any

from bot.notify import delivery
from bot.notify.delivery import Notifier
from config.notify import NotifyTarget
from config.settings import Settings
from runner.events import EventBus
from runner.queue import Notification


class Outbox:
    """The outbox as the loop sees it: `pending` rows, always due; counts the loop's reads."""

    def __init__(self, rows: Sequence[Notification]) -> None:
        self.pending = list(rows)
        self.reads: list[int] = []

    def due_notifications(self, limit: int = 32) -> list[Notification]:
        self.reads.append(limit)
        return self.pending[:limit]

    def next_notification_at(self) -> float | None:
        return time.time() - 1 if self.pending else None

    def fan_out_many(self, ends: Sequence[tuple[int, Iterable[tuple[str, str]]]]) -> list[Notification]:
        swept = {notification_id for notification_id, _ in ends}
        self.pending = [row for row in self.pending if row.id not in swept]
        return []

    def begin_attempt(self, notification_id: int, lease: float) -> bool:
        return True

    def notification_failed(self, notification_id: int, error: str, retry_in: float | None) -> None:
        pass  # an attempt cut short when the test stops the loop


async def run_for(notifier: Notifier, seconds: float) -> None:
    task = asyncio.create_task(notifier._run())  # the loop alone, without an HTTP session
    await asyncio.sleep(seconds)
    tasks = [task, *notifier._inflight.values()]
    for each in tasks:
        each.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def notifier(outbox: Outbox, targets: tuple[NotifyTarget, ...]) -> Notifier:
    settings = dataclasses.replace(Settings.default(), notify=targets)
    return Notifier(outbox, None, EventBus(), settings, {"HOOK_URL": "http://127.0.0.1:9/"})  # type: ignore[arg-type]


async def test_every_slot_taken_the_loop_waits_for_one_instead_of_polling() -> None:
    rows = [Notification(i, 1, "hook", "webhook", "failure", 0) for i in range(1, 201)]
    outbox = Outbox(rows)
    n = notifier(outbox, (NotifyTarget(kind="webhook", name="hook", url_env="HOOK_URL"),))
    hang = asyncio.Event()

    async def send(*_: Any) -> None:
        await hang.wait()  # an endpoint that never answers: every slot stays taken

    n._send = send  # type: ignore[method-assign]
    n._message = lambda row, target: None  # type: ignore[assignment,method-assign,return-value]
    await run_for(n, 1.0)
    # The first round starts what fits, the second finds all of it under way; then nothing until a slot frees (or
    # POLL passes). Polling every 50 ms, as the loop once did, would have read the outbox about 20 times.
    assert len(outbox.reads) <= 3, outbox.reads


async def test_without_targets_pipeline_ends_are_swept_in_large_batches() -> None:
    rows = [Notification(i, i, None, None, "cancelled", 0) for i in range(1, delivery.SWEEP_BATCH + 301)]
    outbox = Outbox(rows)
    await run_for(notifier(outbox, ()), 1.0)
    assert outbox.pending == []  # all swept: a full batch goes on at once with the rest
    assert outbox.reads == [delivery.SWEEP_BATCH, delivery.SWEEP_BATCH]  # then the next sweep is POLL away
