"""`forgeci run` counts as a manual run: the `events` filters apply, path filters do not, inputs get defaults."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from config.settings import Settings
from runner.local import run_local
from runner.models import JobState
from tests.fake_engine import FakeEngine

MakeRepo = Callable[..., tuple[Path, str]]
FILE = '''
[inputs.level]
default = "info"

[jobs.on_push]
events = ["push"]
steps = [{ name = "p", run = "push-only" }]

[jobs.docs]
paths = ["docs/**"]
steps = [{ name = "d", run = "docs" }]
'''


async def test_forgeci_run_is_a_manual_run(fake_settings: Settings, fake_engine: FakeEngine,
                                           make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": FILE})
    result = await run_local(fake_settings, repo, environ={}, out=io.StringIO(), engine=fake_engine)
    found = {job.display: (job.state, job.error) for job in result.jobs}
    assert found["on_push"] == (JobState.skipped, "skipped: job on_push runs on push events, not manual")
    assert found["docs"][0] is JobState.success  # no diff for a manual run: path filters do not apply
    [docs] = [e for e in fake_engine.execs if e.run == "docs"]
    assert docs.env["FORGECI_EVENT"] == "manual" and docs.env["INPUT_LEVEL"] == "info"
