"""Durations: parsing the file syntax, the compact file form, and the human form."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.durations import format_duration, parse_duration, to_duration_string


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90), ("5m", 300), ("2h", 7200), ("1h30m", 5400), ("1h30m15s", 5415),
        ("45", 45), (" 5m ", 300), ("1m 05s", 65), ("2h 03m 00s", 7380), ("0h5m", 300),
    ],
)
def test_parse_duration_accepts_the_documented_forms(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert isinstance(parse_duration(text), float)


@pytest.mark.parametrize(
    "text",
    ["", " ", "soon", "0", "0s", "0h0m", "-5m", "5x", "30m1h", "1h1h", "5ms", "1.5h", "5M", "h",
     "\uff11\uff10s", "1234567890s", "5m junk", "m5"],
)
def test_parse_duration_rejects_everything_else(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration like 90s, 5m or 1h30m"):
        parse_duration(text)


def test_parse_duration_rejects_non_strings() -> None:
    with pytest.raises(ValueError):
        parse_duration(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0ms"), (0.85, "850ms"), (0.9999, "999ms"), (1, "1s"), (42.7, "42s"), (59.9, "59s"),
     (60, "1m 00s"), (65, "1m 05s"), (3599, "59m 59s"), (3723, "1h 02m 03s"), (90000, "25h 00m 00s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf])
def test_format_duration_rejects_impossible_values(bad: float) -> None:
    with pytest.raises(ValueError):
        format_duration(bad)
    with pytest.raises(ValueError):
        to_duration_string(bad)


@pytest.mark.parametrize(
    ("seconds", "text"), [(300, "5m"), (5400, "1h30m"), (5415, "1h30m15s"), (7200, "2h"), (1.2, "2s"), (0, "1s")]
)
def test_to_duration_string_is_compact_and_never_shorter(seconds: float, text: str) -> None:
    assert to_duration_string(seconds) == text


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=10**7))
def test_both_forms_parse_back_to_the_same_seconds(seconds: int) -> None:
    assert parse_duration(to_duration_string(seconds)) == seconds
    assert parse_duration(format_duration(seconds)) == seconds
