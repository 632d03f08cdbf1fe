"""The warm pool (`runner.warm_pool = N`): containers of the default image created and started ahead of demand, so
that a job's pickup does not wait for a container start.

Each pool container serves exactly one job and is never reused: its /tmp, its processes and its workspace go with
it. A container's mounts are fixed at creation, so every slot has a workspace folder of its own
(`workspaces/pool-<hex>`, mounted at /workspace); the job's checkout is made as always in `workspaces/<job id>`,
then moved into the slot's folder (renames, no copy), and `workspaces/<job id>` becomes a link to it, so that
snapshots, caches, artifacts and clean-up find the job's tree where they always did. The job's container and the
slot folder are removed when the job ends, and a new slot is started in the background. Jobs with another image
or with services take the normal path. A server killed with -9 leaves its slots behind: the next start removes them
(their containers carry job id 0, which the start-up reap removes; their folders go here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from runner.engine import ContainerSpec, Engine
from runner.errors import RunnerError

log = logging.getLogger(__name__)

POOL_JOB_ID = 0  # the job label of a pool container until a job takes it (no job has id 0)
SLOT_PREFIX = "pool-"
RETRY_AFTER = 2.0  # seconds before trying again when the engine would not start a slot
REFILL_DELAY = 1.0  # seconds after a job takes a slot before its replacement starts
CHECK_EVERY = 15.0  # seconds between checks that the waiting containers still run (off every job's path)


@dataclass(frozen=True)
class Slot:
    container_id: str
    workspace: Path  # mounted at /workspace in the container


class WarmPool:
    """Up to `size` started containers, each waiting for one job."""

    def __init__(self, engine: Engine, root: Path, size: int,
                 spec_for: Callable[[Path], Awaitable[ContainerSpec]]) -> None:
        self.engine = engine
        self.root = root  # the workspaces folder
        self.size = size
        self.spec_for = spec_for  # the default job container's spec, on a given workspace
        self._ready: list[Slot] = []
        self._need = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.served = 0

    @property
    def ready(self) -> int:
        return len(self._ready)

    async def start(self) -> None:
        """Remove the slot folders a crashed server left (its containers went with the start-up reap), then fill."""
        for path in sorted(self.root.glob(f"{SLOT_PREFIX}*")):
            log.info("removing the leftover warm-pool folder %s", path.name)
            await self._remove_tree(path)
        self._need.set()
        self._task = asyncio.create_task(self._fill(), name="forgeci-warm-pool")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        slots, self._ready = self._ready, []
        for slot in slots:
            await self.discard(slot)

    async def take(self) -> Slot | None:
        """A started container for one job, or None (the pool is empty). No request to the engine on this path:
        the fill loop checks the waiting containers every CHECK_EVERY seconds and replaces dead ones."""
        if not self._ready:
            return None
        slot = self._ready.pop(0)
        # The replacement waits a moment: started at once, its create and start compete with this job's own
        # first exec for the Podman service and the CPU, which is what the pool is there to spare the job.
        asyncio.get_running_loop().call_later(REFILL_DELAY, self._need.set)
        self.served += 1
        return slot

    async def _check(self) -> None:
        """Replace the waiting containers that stopped (killed, removed behind our back)."""
        for slot in list(self._ready):
            try:
                running = (await self.engine.container_state(slot.container_id)).running
            except RunnerError:
                continue  # the engine does not answer: nothing to decide now
            if not running and slot in self._ready:
                log.warning("warm-pool container %s is not running; replacing it", slot.container_id[:12])
                self._ready.remove(slot)
                await self.discard(slot)

    async def discard(self, slot: Slot) -> None:
        with contextlib.suppress(RunnerError):
            await self.engine.remove(slot.container_id)
        await self._remove_tree(slot.workspace)

    async def _fill(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._need.wait(), CHECK_EVERY)
            except TimeoutError:
                await self._check()
            self._need.clear()
            while len(self._ready) < self.size:
                try:
                    self._ready.append(await self._new_slot())
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the engine is down or the image is missing: jobs take the normal path
                    log.warning("could not start a warm-pool container: %s", exc)
                    await asyncio.sleep(RETRY_AFTER)

    async def _new_slot(self) -> Slot:
        workspace = self.root / f"{SLOT_PREFIX}{os.urandom(6).hex()}"
        workspace.mkdir(mode=0o755)
        self.engine.user.chown(workspace)
        try:
            container_id = await self.engine.start_job_container(await self.spec_for(workspace))
        except BaseException:
            await self._remove_tree(workspace)
            raise
        return Slot(container_id, workspace)

    async def _remove_tree(self, path: Path) -> None:
        try:
            await self.engine.remove_tree(path)
        except (RunnerError, OSError) as exc:
            log.warning("could not remove %s: %s", path, exc)
            shutil.rmtree(path, ignore_errors=True)


def adopt(checkout: Path, slot: Path) -> None:
    """Move the job's tree into the slot's folder (renames on one file system) and leave a link in its place."""
    for entry in os.listdir(checkout):
        os.rename(checkout / entry, slot / entry)
    os.rmdir(checkout)
    os.symlink(slot, checkout)
