"""Cron schedules of the server (`[[schedules]]` in forgeci.toml): their schema, and their due times (cronsim)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from config.schema import (
    NONEMPTY,
    STRING_TABLE,
    array_of_tables,
    describe,
    integer,
    nonempty_text,
    option,
    scalar,
)

NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # in URLs (/schedules/{name}/run) and group names
MAX_SCHEDULES: Final = 1000


def _name(value: object) -> str:
    found = nonempty_text(value)
    if not NAME.fullmatch(found):
        raise ValueError(f"expected a name of letters, digits, '.', '_' and '-' (at most 100), got {describe(found)}")
    return found


def _cron(value: object) -> str:
    """Five fields, as cron reads them (cronsim: Debian cron's rules), due at least once in the next 50 years."""
    found = " ".join(nonempty_text(value).split())
    if len(found.split(" ")) != 5:
        raise ValueError(f"expected five fields (minute hour day-of-month month day-of-week), got {describe(found)}")
    try:
        next(CronSim(found, datetime.now(UTC)))
    except CronSimError as exc:
        raise ValueError(f"expected a cron expression like \"0 3 * * *\": {exc} in {describe(found)}") from None
    except StopIteration:
        raise ValueError(f"{describe(found)} is never due") from None
    return found


def _timezone(value: object) -> str:
    found = nonempty_text(value)
    try:
        ZoneInfo(found)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"expected an IANA time zone like Europe/Berlin or UTC, got {describe(found)}") from None
    return found


@dataclass(frozen=True, kw_only=True)
class ScheduleSpec:
    """One [[schedules]] entry: a pipeline of `repo` at the tip of `ref`, each time `cron` is due."""

    name: str = option(scalar("name", _name), "unique name: `POST /schedules/{name}/run`, `forgeci schedules`")
    repo: str = option(NONEMPTY, "clone URL (or a path on the server) of the repository to run")
    ref: str = option(NONEMPTY, "branch, tag or full ref whose tip runs", "main")
    cron: str = option(scalar("cron expression", _cron),
                       "when: five fields, minute hour day-of-month month day-of-week (`0 3 * * *`)")
    timezone: str = option(scalar("time zone", _timezone), "the time zone `cron` is read in", "UTC")
    env: dict[str, str] = option(STRING_TABLE, "variables for every job of its pipelines", factory=dict)
    priority: int | None = option(integer(0, 10), "priority of its jobs", None, shown="`queue.default_priority`")

    def fingerprint(self) -> str:
        """What the stored due time depends on: when the cron, time zone or target changes, it is computed again."""
        text = json.dumps([self.cron, self.timezone, self.repo, self.ref])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def next_due(self, after: float) -> float | None:
        """The first due time strictly after `after` (unix seconds), None when there is none any more."""
        start = datetime.fromtimestamp(after, ZoneInfo(self.timezone))
        try:
            return next(CronSim(self.cron, start)).timestamp()
        except StopIteration:
            return None


SCHEDULES: Final = array_of_tables(ScheduleSpec, name=lambda spec, i: spec.name, limit=MAX_SCHEDULES)
SCHEDULES_DOC: Final = ("[[schedules]]: cron schedules, each a pipeline of a repository's ref when due (event "
                        "`schedule`, its own concurrency group)")


def by_name(schedules: tuple[ScheduleSpec, ...]) -> Mapping[str, ScheduleSpec]:
    return {s.name: s for s in schedules}

