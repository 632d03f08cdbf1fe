"""Runner labels in the queue (claims, wait reasons), the agent registry, and `forgeci run` ignoring runs_on."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from config.settings import Settings
from runner.local import run_local
from runner.models import JobSpec, JobState
from runner.queue import Queue
from runner.queue.labels import ONLINE, agent_of, runner_name
from tests.fake_engine import FakeEngine

MakeRepo = Callable[..., tuple[Path, str]]


def job(queue: Queue, runs_on: list[str] | None = None) -> int:
    pipeline = {"steps": [{"run": "x"}], **({"runs_on": runs_on} if runs_on is not None else {})}
    return queue.enqueue(JobSpec(repo="/r", ref="main", pipeline=pipeline))


def test_a_claim_takes_only_jobs_whose_labels_it_has_all_of(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db", max_concurrent=10, max_retries=0) as queue:
        big = job(queue, ["big", "linux"])
        anyone = job(queue)
        empty = job(queue, [])
        assert queue.wait_reasons([big, anyone]) == {big: "waiting for a runner with: big, linux",
                                                     anyone: "next in line"}
        claimed = [queue.claim("r", 60).id, queue.claim("r", 60).id]  # no labels: only jobs without runs_on
        assert claimed == [anyone, empty] and queue.claim("r", 60) is None
        assert queue.claim("r", 60, ["linux"]) is None  # one of two labels is not enough
        got = queue.claim("r", 60, ["linux", "big", "gpu"])  # more labels than asked: fine
        assert got is not None and got.id == big
        later = job(queue, ["gpu"])
        assert queue.claim("r", 60, None).id == later  # None: any job (forgeci run)
        assert queue.get(big).state is JobState.running


def test_a_job_no_runner_can_take_waits_and_says_so_when_the_slots_are_full(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db", max_concurrent=1, max_retries=0) as queue:
        job(queue)
        queue.claim("r", 60)
        gpu = job(queue, ["gpu"])
        assert queue.wait_reasons([gpu]) == {gpu: "waiting for a runner with: gpu"}
        assert queue.get(gpu).state is JobState.queued


def test_the_registry_remembers_agents_and_their_running_jobs(tmp_path: Path) -> None:
    now = [1000.0]
    with Queue(tmp_path / "q.db", max_concurrent=10, max_retries=0) as queue:
        queue._clock = lambda: now[0]
        queue.agent_seen("build", "host-a", labels=["linux", "big", "big"], version="0.1.0", address="10.0.0.5",
                         max_concurrent=2)
        queue.agent_seen("build", "host-b", labels=[], version=None, address=None, max_concurrent=None)
        job_id = job(queue)
        queue.claim("agent:build:host-a:ab12", 60)
        [a, b] = queue.agents()
        assert (a.id, a.labels, a.running, a.online, a.address) == ("build:host-a", ("big", "linux"), (job_id,),
                                                                    True, "10.0.0.5")
        assert (b.id, b.running, b.online) == ("build:host-b", (), True)
        now[0] += ONLINE + 1
        [a, b] = queue.agents()
        assert a.online and not b.online  # a runs a job: online whatever its last claim
        queue.agent_seen("build", "host-b", labels=["arm"], version="0.2.0", address="10.0.0.6", max_concurrent=1)
        b = queue.agents()[1]
        assert (b.labels, b.version, b.online, b.first_seen, b.last_seen) == (("arm",), "0.2.0", True, 1000.0, now[0])
        queue.complete(job_id, "success", runner_id="agent:build:host-a:ab12")
        assert queue.attempt_runners(job_id) == [{"attempt": 1, "runner": "agent:build:host-a:ab12",
                                                  "agent": "build:host-a", "on": "agent build:host-a",
                                                  "state": "success"}]


def test_runner_names() -> None:
    assert agent_of("agent:build:host-a:ab12") == "build:host-a" and agent_of("ci-1/embedded/12.34") is None
    assert runner_name("ci-1/embedded/12.34") == "embedded on ci-1" and runner_name(None) == "–"


async def test_forgeci_run_runs_jobs_whatever_their_runs_on(
        fake_settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    repo, _ = make_local_repo({".forgeci.toml": 'runs_on = ["gpu"]\n[jobs.a]\nsteps = [{ run = "x" }]\n'
                                                '[jobs.b]\nruns_on = ["big"]\nneeds = ["a"]\nsteps = [{ run = "y" }]\n'})
    result = await run_local(fake_settings, repo, environ={}, out=io.StringIO(), engine=fake_engine)
    assert result.succeeded and {j.display: j.state for j in result.jobs} == {"a": JobState.success,
                                                                               "b": JobState.success}
