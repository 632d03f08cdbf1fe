"""Quotas ([[quotas]] in forgeci.toml): which queued jobs claims skip, why they wait, and which pipelines are refused.

The rules are read at claim time from `quota_rules` (set from the settings when the server starts), matched on
the slug a job got at enqueue, so a changed setting applies after a restart without touching queued jobs. A job
belongs to the first rule that matches its repository; max_running counts the running jobs of that rule.
"""

from __future__ import annotations

import calendar
import datetime as dt
import json
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from config.quotas import QuotaRule, rule_for
from runner.queue.base import QueueBase
from runner.queue.pipelines import UNFINISHED

_ACTIVE = "state IN ('queued', 'running')"
_RUNNING_BY = (f"SELECT coalesce(slug, ''), coalesce(user, ''), count(*) FROM jobs INDEXED BY jobs_active "
               f"WHERE {_ACTIVE} AND state = 'running' GROUP BY 1, 2")
_QUEUED_BY = (f"SELECT DISTINCT coalesce(slug, ''), coalesce(user, '') FROM jobs INDEXED BY jobs_active "
              f"WHERE {_ACTIVE} AND state = 'queued'")
_WAITING_PIPELINES = ("SELECT coalesce(slug, ''), count(*) FROM pipelines INDEXED BY pipelines_unfinished "
                      f"WHERE {UNFINISHED} AND state IN ('planning', 'queued') "
                      "AND id IS NOT ? GROUP BY 1")
USER_SEP = "\x1f"  # between slug and user in the claim filter's keys (char(31) in SQL)


def month_start(ts: float) -> float:
    """The start of ts's calendar month, UTC."""
    day = dt.datetime.fromtimestamp(ts, dt.UTC)
    return calendar.timegm((day.year, day.month, 1, 0, 0, 0))


def month_range(month: str) -> tuple[float, float]:
    """[start, end) of a `YYYY-MM` month, UTC; ValueError for anything else."""
    year, _, number = month.partition("-")
    if len(year) != 4 or len(number) != 2 or not (year + number).isdigit() or not 1 <= int(number) <= 12:
        raise ValueError(f"expected a month like 2026-12, got {month!r}")
    y, m = int(year), int(number)
    if not 1970 <= y <= 9000:
        raise ValueError(f"expected a month from 1970 to 9000, got {month!r}")
    return calendar.timegm((y, m, 1, 0, 0, 0)), calendar.timegm((y + m // 12, m % 12 + 1, 1, 0, 0, 0))


@dataclass(frozen=True)
class QuotaUse:
    """One rule's use now: used/limit of each of its limits (0 = no limit)."""

    match: str
    running: int
    max_running: int
    queued: int
    max_queued: int
    minutes: float
    minutes_per_month: int
    per_user_running: int
    users: dict[str, int]  # running jobs per triggering user

    def to_dict(self) -> dict[str, Any]:
        return {"match": self.match, "running": self.running, "max_running": self.max_running,
                "queued": self.queued, "max_queued": self.max_queued, "minutes": round(self.minutes, 2),
                "minutes_per_month": self.minutes_per_month, "per_user_running": self.per_user_running,
                "users": self.users}


class QuotaQueries(QueueBase):
    """The quota rules applied to claims, wait reasons and new pipelines."""

    quota_rules: tuple[QuotaRule, ...] = ()
    _rule_cache: dict[str, int | None]

    def set_quotas(self, rules: Sequence[QuotaRule]) -> None:
        self.quota_rules = tuple(rules)
        self._rule_cache = {}

    def quota_rule(self, slug: str) -> int | None:
        """The index of the rule a slug belongs to (the first that matches), or None."""
        cache = self.__dict__.setdefault("_rule_cache", {})
        if slug not in cache:
            cache[slug] = rule_for(self.quota_rules, slug)
        return cache[slug]

    # -- claims ----------------------------------------------------------------------------------------

    def _running_by_rule(self, conn: sqlite3.Connection) -> tuple[Counter[int], Counter[tuple[int, str]]]:
        per_rule: Counter[int] = Counter()
        per_user: Counter[tuple[int, str]] = Counter()
        for slug, user, count in conn.execute(_RUNNING_BY):
            rule = self.quota_rule(slug)
            if rule is not None:
                per_rule[rule] += count
                per_user[(rule, user)] += count
        return per_rule, per_user

    def _full(self, conn: sqlite3.Connection) -> tuple[set[int], set[tuple[int, str]]]:
        """The rules whose max_running, and the (rule, user)s whose per_user_running, are reached."""
        per_rule, per_user = self._running_by_rule(conn)
        rules = self.quota_rules
        full = {i for i, n in per_rule.items() if rules[i].max_running and n >= rules[i].max_running}
        users = {(i, u) for (i, u), n in per_user.items()
                 if rules[i].per_user_running and n >= rules[i].per_user_running}
        return full, users

    def _quota_filter(self, conn: sqlite3.Connection) -> str | None:
        """The claim's quota filter (`:quota` in jobs.py's _CLAIM), in its transaction: JSON {"s": [slug, ...],
        "u": ["slug\\x1fuser", ...]} of the queued jobs it must skip (their rule's max_running, or their user's
        per_user_running, is reached), or None: nothing to skip, the claim is as without quotas."""
        if not self.quota_rules or not any(rule.max_running or rule.per_user_running for rule in self.quota_rules):
            return None  # (no rules at all is every claim of a server without quotas: the cheapest test first)
        full, full_users = self._full(conn)
        if not full and not full_users:
            return None
        slugs: set[str] = set()
        users: set[str] = set()
        for slug, user in conn.execute(_QUEUED_BY):
            rule = self.quota_rule(slug)
            if rule in full:
                slugs.add(slug)
            elif (rule, user) in full_users:
                users.add(slug + USER_SEP + user)
        return json.dumps({"s": sorted(slugs), "u": sorted(users)}) if slugs or users else None

    def wait_reasons(self, job_ids: Sequence[int]) -> dict[int, str]:
        """As JobQueries.wait_reasons, with a full quota named where claim's quota filter is what holds a job."""
        reasons: dict[int, str] = super().wait_reasons(job_ids)  # type: ignore[misc]
        if not self.quota_rules:
            return reasons
        plain = [job_id for job_id, why in reasons.items() if why == "next in line" or why.startswith("no free slot")]
        if not plain:
            return reasons
        with self._transaction("BEGIN") as conn:
            per_rule, per_user = self._running_by_rule(conn)
            marks = ",".join("?" * len(plain))
            found = conn.execute(f"SELECT id, coalesce(slug, ''), coalesce(user, '') FROM jobs WHERE id IN ({marks})",
                                 plain).fetchall()
        for job_id, slug, user in found:
            rule = self.quota_rule(slug)
            if rule is None:
                continue
            limits = self.quota_rules[rule]
            if limits.max_running and per_rule[rule] >= limits.max_running:
                reasons[job_id] = f"quota {limits.match}: {per_rule[rule]} of {limits.max_running} running"
            elif limits.per_user_running and per_user[(rule, user)] >= limits.per_user_running:
                reasons[job_id] = (f"quota {limits.match}: {per_user[(rule, user)]} of {user}'s "
                                   f"{limits.per_user_running} running")
        return reasons

    # -- new pipelines ------------------------------------------------------------------------------------

    def quota_refusal(self, slug: str, exclude_pipeline: int | None = None) -> str | None:
        """Why a new pipeline of `slug` is refused now (max_queued reached, or the month's minutes used up), or
        None. `exclude_pipeline`: the pipeline asking, already recorded (a webhook's, while it is planned)."""
        rule = self.quota_rule(slug)
        if rule is None:
            return None
        limits = self.quota_rules[rule]
        if limits.max_queued:
            with self._transaction("BEGIN") as conn:
                waiting = sum(n for s, n in conn.execute(_WAITING_PIPELINES, (exclude_pipeline,))
                              if self.quota_rule(s) == rule)
            if waiting >= limits.max_queued:
                return f"quota exceeded: {waiting} of {limits.max_queued} pipelines queued ({limits.match})"
        if limits.minutes_per_month:
            used = self._minutes_used(rule)
            if used >= limits.minutes_per_month:
                return (f"quota exceeded: {int(used)} of {limits.minutes_per_month} minutes this month "
                        f"({limits.match})")
        return None

    def _minutes_used(self, rule: int) -> float:
        seconds = self.usage_seconds_by_slug(month_start(self._clock()))  # type: ignore[attr-defined]
        return sum(s for slug, s in seconds.items() if self.quota_rule(slug) == rule) / 60

    def quota_use(self) -> list[QuotaUse]:
        """Every rule's use now (the API, the dashboard and the TUI show it)."""
        if not self.quota_rules:
            return []
        with self._transaction("BEGIN") as conn:
            per_rule, per_user = self._running_by_rule(conn)
            waiting = conn.execute(_WAITING_PIPELINES, (None,)).fetchall()
        seconds = self.usage_seconds_by_slug(month_start(self._clock()))  # type: ignore[attr-defined]
        out = []
        for i, rule in enumerate(self.quota_rules):
            out.append(QuotaUse(
                rule.match, per_rule[i], rule.max_running, sum(n for s, n in waiting if self.quota_rule(s) == i),
                rule.max_queued, sum(v for s, v in seconds.items() if self.quota_rule(s) == i) / 60,
                rule.minutes_per_month, rule.per_user_running,
                {u: n for (r, u), n in sorted(per_user.items()) if r == i}))
        return out
