"""Usage (the migration that made the `usage` table): every job's and pipeline's slug and triggering user, written
at enqueue (job_scope: runner.repos is the one slug parser), one row per attempt, and the usage report.

The usage rows are written by a TEMP trigger each queue connection creates on open, with the functions it calls:
every path that ends an attempt records it in its own transaction, the connection's clock stamps the end, and a
plain `sqlite3` connection (a backup, a test) changes jobs as before.
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote

from runner.models import JobSpec
from runner.queue.base import QueueBase
from runner.queue.schema import MIGRATIONS
from runner.repos import parse_repo

By = Literal["owner", "repo", "user"]
RETENTION_MONTHS = 13  # usage rows are kept at least this many calendar months

_TRIGGERS = (
    # Every attempt that ends (completed, requeued, ended by retries used up or a lease expiry) is one row.
    # seq: 0, unless this job's attempt of this number already ended at this instant (a retried pipeline numbers its
    # jobs' attempts afresh; a test's clock stands still): a seek in the key, never a lost row.
    """CREATE TEMP TRIGGER IF NOT EXISTS forgeci_usage AFTER UPDATE OF state ON main.jobs
    WHEN OLD.state = 'running' AND NEW.state != 'running' AND OLD.started_at IS NOT NULL
    BEGIN
        INSERT INTO usage (job_id, attempt, pipeline_id, slug, user, runner, state, started_at, ended_at, seconds,
                           infra_retry, seq)
        SELECT NEW.id, OLD.attempts, NEW.pipeline_id, coalesce(NEW.slug, forgeci_slug(NEW.repo), ''), NEW.user,
               OLD.runner_id, NEW.state, OLD.started_at, e, max(0, e - OLD.started_at), NEW.state = 'queued',
               (SELECT count(*) FROM main.usage AS u WHERE u.ended_at = e AND u.job_id = NEW.id
                                                      AND u.attempt = OLD.attempts)
        FROM (SELECT coalesce(NEW.finished_at, forgeci_now()) AS e);
    END""",
)
# Jobs and pipelines queued before the migration get their slug and user once, as it is applied.
_USAGE_VERSION = next(i for i, script in enumerate(MIGRATIONS, start=1) if "CREATE TABLE usage" in script)
_BACKFILL = (
    ("UPDATE jobs SET slug = forgeci_slug(repo), user = forgeci_user(event, meta) "
     "WHERE state IN ('queued', 'running') AND slug IS NULL"),
    ("UPDATE pipelines SET slug = forgeci_slug(repo), user = forgeci_user(event, json_extract(spec, '$.meta')) "
     "WHERE state IN ('planning', 'queued', 'running') AND slug IS NULL"),
)


def usage_cutoff(now: float) -> float:
    """The start of the calendar month (UTC) RETENTION_MONTHS before now's: usage older than it may go."""
    day = dt.datetime.fromtimestamp(now, dt.UTC)
    months = day.year * 12 + day.month - 1 - RETENTION_MONTHS
    return calendar.timegm((months // 12, months % 12 + 1, 1, 0, 0, 0))


@functools.lru_cache(maxsize=4096)
def repo_slug(repo: str) -> str:
    """`owner/repo` of a repository address (runner.repos' parser); "" when it cannot be parsed."""
    try:
        return parse_repo(repo).slug
    except ValueError:
        return ""


def triggering_user(event: str, meta: Mapping[str, Any]) -> str:
    """Who triggered a job: the API's `user`, the forge's sender (or pusher), `schedule:<name>`, else the event
    (`api` for a manual run: the API's default user)."""
    for key in ("user", "sender", "pusher"):
        if isinstance(value := meta.get(key), str) and value:
            # a forge's name may hold lone surrogates (JSON allows them; SQLite's UTF-8 does not)
            return str(value) if value.isascii() else value.encode("utf-8", "replace").decode("utf-8")
    if meta.get("schedule"):
        return f"schedule:{meta['schedule']}"
    return "api" if event == "manual" else event


def job_scope(spec: JobSpec) -> tuple[str, str]:
    """(slug, triggering user) of a job or pipeline, for its columns at enqueue."""
    return repo_slug(spec.repo), triggering_user(spec.event, spec.meta)


def _user_of(event: str, meta: str | None) -> str:
    try:
        found = json.loads(meta) if meta else {}
    except ValueError:
        found = {}
    return triggering_user(event, found if isinstance(found, dict) else {})


def slug_of_repo_id(repo_id: str) -> str:
    """The slug of a cache or artifact index's repo id (`host/owner/name`, percent-encoded parts)."""
    return "/".join(unquote(part) for part in repo_id.split("/")[-2:])


def group_key(by: By, slug: str, user: str | None) -> str:
    if by == "user":
        return user or "(unknown)"
    return slug.split("/")[0] if by == "owner" else slug


@dataclass
class UsageRow:
    """One line of the usage report: a repository, owner or user over a time range."""

    key: str
    pipelines: int = 0
    jobs: int = 0
    succeeded: int = 0
    attempts: int = 0
    seconds: float = 0.0
    retry_seconds: float = 0.0  # of attempts retried after an infrastructure fault (included in seconds)
    bytes: dict[str, int] = field(default_factory=lambda: {"caches": 0, "snapshots": 0, "artifacts": 0})
    _pipeline_ids: set[int] = field(default_factory=set, repr=False)
    _finished: dict[int, str] = field(default_factory=dict, repr=False)

    @property
    def minutes(self) -> float:
        return self.seconds / 60

    @property
    def success_rate(self) -> float | None:
        return self.succeeded / self.jobs if self.jobs else None


class UsageQueries(QueueBase):
    """The slug/user triggers, the per-attempt usage rows and the report over them."""

    def _migrate(self) -> None:
        conn = self._conn
        before = conn.execute("PRAGMA user_version").fetchone()[0]
        super()._migrate()
        conn.create_function("forgeci_slug", 1, repo_slug, deterministic=True)
        conn.create_function("forgeci_user", 2, _user_of, deterministic=True)
        conn.create_function("forgeci_now", 0, lambda: self._clock())
        with self._transaction() as tx:
            for statement in (*_TRIGGERS, *(_BACKFILL if before < _USAGE_VERSION else ())):
                tx.execute(statement)

    def usage_rows(self, since: float, until: float) -> list[tuple[Any, ...]]:
        """The attempts that ended in [since, until): (job, attempt, pipeline, slug, user, runner, state, started,
        ended, seconds, infra_retry), in end order."""
        with self._transaction("BEGIN") as conn:
            return conn.execute(
                "SELECT job_id, attempt, pipeline_id, slug, user, runner, state, started_at, ended_at, seconds, "
                "infra_retry FROM usage WHERE ended_at >= ? AND ended_at < ? ORDER BY ended_at, job_id, attempt, seq",
                (since, until)).fetchall()

    def usage_report(self, by: By, since: float, until: float) -> list[UsageRow]:
        """Per owner, repository or user: pipelines, jobs (finished, and how many succeeded), attempts and their
        seconds (the retried ones apart), and the bytes stored now (caches have no user: by user they are left out)."""
        rows: dict[str, UsageRow] = {}

        def row(key: str) -> UsageRow:
            return rows.setdefault(key, UsageRow(key))

        for job_id, _, pipeline_id, slug, user, _, state, _, _, seconds, retried in self.usage_rows(since, until):
            found = row(group_key(by, slug, user))
            found.attempts += 1
            found.seconds += seconds
            found.retry_seconds += seconds if retried else 0.0
            if pipeline_id is not None:
                found._pipeline_ids.add(pipeline_id)
            if state != "queued":
                found._finished[job_id] = state
        for found in rows.values():
            found.pipelines = len(found._pipeline_ids)
            found.jobs = len(found._finished)
            found.succeeded = sum(state == "success" for state in found._finished.values())
        for kind, key, size in self.stored_bytes(by):
            row(key).bytes[kind] += size
        return sorted(rows.values(), key=lambda r: (-r.seconds, r.key))

    def stored_bytes(self, by: By) -> list[tuple[str, str, int]]:
        """(kind, group key, bytes) of what the store holds now, from the cache, snapshot and artifact indexes."""
        out: list[tuple[str, str, int]] = []
        with self._transaction("BEGIN") as conn:
            if by != "user":
                for repo_id, size in conn.execute("SELECT repo, sum(size) FROM cache_entries GROUP BY repo"):
                    out.append(("caches", group_key(by, slug_of_repo_id(repo_id), None), size))
            for slug, user, size in conn.execute(
                    "SELECT coalesce(j.slug, u.slug, ''), coalesce(j.user, u.user), s.size FROM snapshots s "
                    "LEFT JOIN jobs j ON j.id = s.job_id "
                    "LEFT JOIN (SELECT job_id, max(slug) AS slug, max(user) AS user FROM usage GROUP BY job_id) u "
                    "ON u.job_id = s.job_id"):
                out.append(("snapshots", group_key(by, slug or "(unknown)", user), size))
            for repo_id, user, size in conn.execute(
                    "SELECT a.repo, (SELECT max(user) FROM usage WHERE usage.job_id = a.job_id), a.size "
                    "FROM artifacts a WHERE a.object IS NOT NULL"):
                out.append(("artifacts", group_key(by, slug_of_repo_id(repo_id), user), size))
        return out

    def usage_seconds_by_slug(self, since: float) -> dict[str, float]:
        """Seconds of the attempts ended since `since`, plus the running attempts' so far, per slug."""
        now = self._clock()
        totals: dict[str, float] = defaultdict(float)
        with self._transaction("BEGIN") as conn:
            for slug, seconds in conn.execute("SELECT slug, sum(seconds) FROM usage WHERE ended_at >= ? GROUP BY slug",
                                              (since,)):
                totals[slug] += seconds
            for slug, started in conn.execute(
                    "SELECT coalesce(slug, ''), started_at FROM jobs INDEXED BY jobs_active "
                    "WHERE state IN ('queued', 'running') AND state = 'running'"):
                totals[slug] += max(0.0, now - max(started or now, since))
        return dict(totals)

    def prune_usage(self, before: float) -> int:
        """Retention: delete the usage rows of attempts that ended before `before`; returns how many."""
        with self._transaction() as conn:
            return conn.execute("DELETE FROM usage WHERE ended_at < ?", (before,)).rowcount
