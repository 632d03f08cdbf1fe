"""Runner labels in the queue (jobs.runs_on, config/labels.py) and the agent registry (the agents table).

The claim query (jobs.py's _CLAIM) takes LABEL_FILTER with `:labels`, the claiming runner's labels as a JSON
array: a job whose runs_on has a label the runner lacks is skipped, so it waits for a runner that has them all.
NULL labels take any job: `forgeci run` runs a pipeline on this machine whatever runners its jobs ask for.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runner.queue.agents import AGENT_PREFIX
from runner.queue.base import QueueBase

LABEL_FILTER = ("(:labels IS NULL OR q.runs_on IS NULL OR NOT EXISTS (SELECT 1 FROM json_each(q.runs_on) "
                "WHERE value NOT IN (SELECT value FROM json_each(:labels))))")
ONLINE = 90.0  # seconds: an agent whose last claim is older than this is shown offline (claims poll every 30 s)
WAITING_FOR = "waiting for a runner with: "

_SEEN = """
INSERT INTO agents (name, instance, labels, version, address, max_concurrent, first_seen, last_seen)
VALUES (:name, :instance, :labels, :version, :address, :max_concurrent, :now, :now)
ON CONFLICT (name, instance) DO UPDATE
SET labels = excluded.labels, version = excluded.version, address = excluded.address,
    max_concurrent = excluded.max_concurrent, last_seen = excluded.last_seen
"""
_AGENTS = "SELECT name, instance, labels, version, address, max_concurrent, first_seen, last_seen FROM agents"
_RUNNING_AGENT_JOBS = ("SELECT id, runner_id FROM jobs INDEXED BY jobs_active "
                       "WHERE state IN ('queued', 'running') AND state = 'running' AND runner_id LIKE 'agent:%'")


def runner_name(runner_id: str | None) -> str:
    """How views name a runner: `agent build-01:host-a`, `embedded on HOST`, or the id itself."""
    agent = agent_of(runner_id)
    if agent is not None:
        return f"agent {agent}"
    if runner_id and "/embedded" in runner_id:
        return f"embedded on {runner_id.partition('/embedded')[0]}"
    return runner_id or "–"


def label_json(labels: Sequence[str] | None) -> str | None:
    """A claimer's labels for LABEL_FILTER; None: it takes any job whatever its runs_on (`forgeci run`)."""
    if labels is None:
        return None
    return json.dumps(sorted(set(labels))) if labels else "[]"  # no labels: every claim of an embedded worker


def agent_of(runner_id: str | None) -> str | None:
    """`agent:NAME:INSTANCE:LEASE` -> `NAME:INSTANCE` (how views name the agent); None for another runner."""
    if not runner_id or not runner_id.startswith(AGENT_PREFIX):
        return None
    name, _, rest = runner_id.removeprefix(AGENT_PREFIX).partition(":")
    instance = rest.partition(":")[0]
    return f"{name}:{instance}" if instance else name


@dataclass(frozen=True)
class AgentInfo:
    """An agent as its last claim described it, and the jobs it runs now."""

    name: str
    instance: str
    labels: tuple[str, ...]
    version: str | None
    address: str | None
    max_concurrent: int | None
    first_seen: float
    last_seen: float
    running: tuple[int, ...]
    online: bool

    @property
    def id(self) -> str:
        return f"{self.name}:{self.instance}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "instance": self.instance, "labels": list(self.labels),
                "version": self.version, "address": self.address, "max_concurrent": self.max_concurrent,
                "first_seen": self.first_seen, "last_seen": self.last_seen, "online": self.online,
                "running_jobs": list(self.running)}


class LabelQueries(QueueBase):
    """Wait reasons of labelled jobs, and the agent registry."""

    def wait_reasons(self, job_ids: Sequence[int]) -> dict[int, str]:
        """As JobQueries.wait_reasons; a job with runs_on held by nothing but the free slots or its turn waits for a
        runner with its labels (which may be none at all: it waits, it is never failed)."""
        reasons: dict[int, str] = super().wait_reasons(job_ids)  # type: ignore[misc]
        plain = [job_id for job_id, why in reasons.items() if why == "next in line" or why.startswith("no free slot")]
        if not plain:
            return reasons
        marks = ",".join("?" * len(plain))
        with self._transaction("BEGIN") as conn:
            found = conn.execute(f"SELECT id, runs_on FROM jobs WHERE id IN ({marks}) AND runs_on IS NOT NULL",
                                 plain).fetchall()
        for job_id, runs_on in found:
            reasons[job_id] = WAITING_FOR + ", ".join(json.loads(runs_on))
        return reasons

    def agent_seen(self, name: str, instance: str, *, labels: Sequence[str], version: str | None,
                   address: str | None, max_concurrent: int | None) -> None:
        """Record an agent's claim: who it is, its labels, version and address, now."""
        with self._transaction() as conn:
            conn.execute(_SEEN, {"name": name, "instance": instance, "labels": label_json(labels),
                                 "version": version, "address": address, "max_concurrent": max_concurrent,
                                 "now": self._clock()})

    def agents(self) -> list[AgentInfo]:
        """Every agent that ever claimed, by name, with its running jobs; online: it claimed in the last ONLINE s."""
        with self._transaction("BEGIN") as conn:
            rows = conn.execute(_AGENTS + " ORDER BY name, instance").fetchall()
            running = _running_by_agent(conn)
        now = self._clock()
        return [AgentInfo(name, instance, tuple(json.loads(labels)), version, address, max_concurrent, first, last,
                          tuple(running.get(f"{name}:{instance}", ())), now - last <= ONLINE or
                          bool(running.get(f"{name}:{instance}")))
                for name, instance, labels, version, address, max_concurrent, first, last in rows]

    def attempt_runners(self, job_id: int) -> list[dict[str, Any]]:
        """Which runner ran each attempt of a job (its usage rows, and the attempt running now), oldest first."""
        with self._transaction("BEGIN") as conn:
            rows = conn.execute("SELECT attempt, runner, state FROM usage WHERE job_id = ? ORDER BY attempt, ended_at",
                                (job_id,)).fetchall()
            now = conn.execute("SELECT attempts, runner_id FROM jobs WHERE id = ? AND state = 'running'",
                               (job_id,)).fetchone()
        found = [{"attempt": attempt, "runner": runner, "agent": agent_of(runner), "on": runner_name(runner),
                  "state": "retried" if state == "queued" else state} for attempt, runner, state in rows]
        if now is not None and all(row["attempt"] != now[0] for row in found):
            found.append({"attempt": now[0], "runner": now[1], "agent": agent_of(now[1]), "on": runner_name(now[1]),
                          "state": "running"})
        return found

    def forget_agent(self, name: str, instance: str) -> bool:
        with self._transaction() as conn:
            return conn.execute("DELETE FROM agents WHERE name = ? AND instance = ?", (name, instance)).rowcount == 1


def _running_by_agent(conn: sqlite3.Connection) -> dict[str, list[int]]:
    running: dict[str, list[int]] = {}
    for job_id, runner_id in conn.execute(_RUNNING_AGENT_JOBS):
        agent = agent_of(runner_id)
        if agent is not None:
            running.setdefault(agent, []).append(job_id)
    return running
