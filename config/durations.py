"""Durations as written in config files (`90s`, `5m`, `1h30m`) and as shown to people (`1m 05s`)."""

from __future__ import annotations

import math
import re

# Units largest first; a duration names each at most once, in this order ("1h30m", never "30m1h").
_UNITS: dict[str, int] = {"h": 3600, "m": 60, "s": 1}
# At most 9 digits per number: no config needs more, and it keeps int() clear of huge inputs.
_PART = re.compile(r"([0-9]{1,9})\s*([hms])\s*")
_BARE = re.compile(r"[0-9]{1,9}")

EXPECTED = "expected a duration like 90s, 5m or 1h30m"


def parse_duration(value: str) -> float:
    """Seconds in `value`: `90s`, `5m`, `2h`, `1h30m15s`, `1m 05s`, or a bare number of seconds.

    Raises ValueError (with a message fit for a ConfigIssue) unless the duration is positive.
    """
    if not isinstance(value, str):
        raise ValueError(f"{EXPECTED}, got {type(value).__name__}")
    text = value.strip()
    if _BARE.fullmatch(text):
        seconds = int(text)
    else:
        seconds, pos, last_rank = 0, 0, -1
        units = list(_UNITS)
        for match in _PART.finditer(text):
            rank = units.index(match[2])
            if match.start() != pos or rank <= last_rank:
                break
            seconds += int(match[1]) * _UNITS[match[2]]
            pos, last_rank = match.end(), rank
        if pos != len(text) or last_rank < 0:
            raise ValueError(f"{EXPECTED}, got {value[:40]!r}")
    if seconds <= 0:
        raise ValueError(f"{EXPECTED}, got {value[:40]!r} (a duration must be positive)")
    return float(seconds)


def to_duration_string(seconds: float) -> str:
    """The compact file form of `seconds` (`1h30m`, `90s` -> `1m30s`); parse_duration reads it back.

    Fractions round up: a limit written to a file must never become shorter.
    """
    total = _checked(seconds)
    total = max(1, math.ceil(total))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return "".join(parts)


def format_duration(seconds: float) -> str:
    """A human form for logs and UIs: `850ms`, `42s`, `1m 05s`, `2h 03m 00s`."""
    total = _checked(seconds)
    if total < 1:
        return f"{int(total * 1000)}ms"
    # Truncate rather than round so a 59.6 s step never shows as "60s".
    whole = int(total)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _checked(seconds: float) -> float:
    """`seconds` as a float, or ValueError when it is negative, NaN or infinite."""
    value = float(seconds)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"expected a finite, non-negative number of seconds, got {seconds!r}")
    return value
