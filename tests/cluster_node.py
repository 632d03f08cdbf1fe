"""A process of a cluster test: `lock URL NAME LEASE` holds a singleton (runner/queue/leader.py) and says on stdout
when it starts and stops running it; `coordinator URL DATA_DIR LEASE` runs a forgeci runtime with the fake engine
on a PostgreSQL queue (embedded workers, the singletons) until it is killed."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from pathlib import Path


def say(*words: object) -> None:
    print(*words, flush=True)


async def hold(url: str, name: str, lease: float) -> None:
    from runner.queue.leader import Leadership
    from runner.queue.postgres import conninfo

    async def task() -> None:
        say("LEADER", os.getpid())
        try:
            while True:
                await asyncio.sleep(0.05)
                say("TICK", os.getpid())
        finally:
            say("STOPPED", os.getpid())

    say("READY", os.getpid())
    await Leadership(conninfo(url), name, task, lease=lease).run()


async def coordinate(url: str, data_dir: str, lease: float) -> None:
    from config.settings import Settings
    from runner.runtime import open_runtime
    from tests.fake_engine import FAKE_IMAGE, FakeEngine, Script

    base = Settings.default()
    settings = dataclasses.replace(
        base, data_dir=Path(data_dir),
        runner=dataclasses.replace(base.runner, image=FAKE_IMAGE, network="none", ca_bundle=""),
        queue=dataclasses.replace(base.queue, url=url, lease_seconds=lease, max_concurrent=8))
    engine = FakeEngine()
    engine.default = Script(lines=["working"], delay=float(os.environ.get("STEP_DELAY", "0.05")))
    async with open_runtime(settings, {}, workers=True, engine=engine):
        say("READY", os.getpid())
        await asyncio.Event().wait()


def main() -> None:
    mode, url = sys.argv[1], sys.argv[2]
    if mode == "lock":
        asyncio.run(hold(url, sys.argv[3], float(sys.argv[4])))
    else:
        asyncio.run(coordinate(url, sys.argv[3], float(sys.argv[4])))


if __name__ == "__main__":
    main()
