"""forgeci.toml's [[quotas]] (per owner/repository limits) and [costs] (prices for the usage report)."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass

from config.schema import (
    NONEMPTY,
    array_of_tables,
    describe,
    integer,
    nonempty_text,
    option,
    scalar,
)

UNLIMITED = 0  # a limit of 0 (the default) is no limit


def _glob(value: object) -> str:
    text = nonempty_text(value)
    if "/" not in text and text != "*":
        raise ValueError(f"expected an owner/repo glob like 'acme/*', got {describe(text)}")
    return text


def _price(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"expected a number >= 0, got {describe(value)}")
    return float(value)


PRICE = scalar("number >= 0", _price)


@dataclass(frozen=True)
class QuotaRule:
    """One [[quotas]] entry: limits for the repositories whose `owner/repo` slug matches `match`."""

    match: str = option(scalar("glob", _glob), "owner/repo glob over the repository's slug; the first matching "
                                               "rule applies")
    max_running: int = option(integer(0), "jobs of this scope running at once; more wait; 0 = no limit", UNLIMITED)
    max_queued: int = option(integer(0), "pipelines of this scope waiting (planning or queued); more are refused; "
                                         "0 = no limit", UNLIMITED)
    minutes_per_month: int = option(integer(0), "runner minutes per calendar month (UTC; job wall time, every "
                                                "attempt counted); past it new pipelines are refused; 0 = no limit",
                                    UNLIMITED)
    per_user_running: int = option(integer(0), "jobs of one triggering user of this scope running at once; "
                                               "0 = no limit", UNLIMITED)

    def matches(self, slug: str) -> bool:
        return fnmatch.fnmatchcase(slug, self.match)


@dataclass(frozen=True)
class CostSettings:
    """[costs]: optional prices; the usage report shows costs when one is set."""

    per_minute: float = option(PRICE, "price of one runner minute", 0.0)
    per_gb_month: float = option(PRICE, "price of one GB (10^9 bytes) stored for a month", 0.0)
    currency: str = option(NONEMPTY, "currency the prices are in", "USD")

    @property
    def enabled(self) -> bool:
        return bool(self.per_minute or self.per_gb_month)


QUOTAS = array_of_tables(QuotaRule)


def rule_for(rules: Sequence[QuotaRule], slug: str) -> int | None:
    """The index of the first rule matching `slug`, or None when none does."""
    return next((i for i, rule in enumerate(rules) if rule.matches(slug)), None)
