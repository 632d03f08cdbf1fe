"""[[schedules]] in forgeci.toml: read, checked with key paths (`config check`), due times in their time zone."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from config.errors import ConfigError
from config.settings import parse_settings
from forgeci_cli import main

GOOD = '''
[[schedules]]
name = "nightly"
repo = "https://github.com/acme/app.git"
ref = "main"
cron = "0 3 * * *"
timezone = "Europe/Berlin"
env = { FULL = "1" }
'''


def test_a_schedule_reads_and_is_due_in_its_time_zone() -> None:
    [nightly] = parse_settings(GOOD, "forgeci.toml").schedules
    assert (nightly.name, nightly.cron, nightly.env, nightly.priority) == ("nightly", "0 3 * * *", {"FULL": "1"}, None)
    berlin = ZoneInfo("Europe/Berlin")
    after = datetime(2026, 3, 28, 12, 0, tzinfo=berlin).timestamp()  # the night the clocks go forward
    due = nightly.next_due(after)
    assert due is not None and datetime.fromtimestamp(due, berlin) == datetime(2026, 3, 29, 3, 0, tzinfo=berlin)


@pytest.mark.parametrize(("text", "message"), [
    ('cron = "61 * * * *"', 'schedules[0].cron: expected a cron expression like "0 3 * * *": Bad minute in '
                            "'61 * * * *'"),
    ('cron = "0 3 * *"', "schedules[0].cron: expected five fields (minute hour day-of-month month day-of-week), "
                         "got '0 3 * *'"),
    ('cron = "* * */20 * 1L"', "schedules[0].cron: '* * */20 * 1L' is never due"),
    ('cron = "@daily"', "schedules[0].cron: expected five fields"),
    ('cron = "* * * * *"\ntimezone = "Mars/Olympus"', "schedules[0].timezone: expected an IANA time zone"),
    ('cron = "* * * * *"\nname = "a b"', "schedules[0].name: expected a name of letters"),
])
def test_a_bad_schedule_is_reported_with_its_key_path(text: str, message: str) -> None:
    entry = '[[schedules]]\nrepo = "r"\n' + ("" if "name =" in text else 'name = "n"\n') + text + "\n"
    with pytest.raises(ConfigError) as caught:
        parse_settings(entry, "forgeci.toml")
    assert f"forgeci.toml: {message}" in str(caught.value)


def test_duplicate_names_are_refused() -> None:
    twice = GOOD + GOOD.replace('"0 3 * * *"', '"0 4 * * *"')
    with pytest.raises(ConfigError, match=r"schedules\[1\]\.name: duplicate name 'nightly' "
                                          r"\(also schedules\[0\]\)"):
        parse_settings(twice, "forgeci.toml")


def test_config_check_names_the_bad_expression(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "forgeci.toml"
    path.write_text(GOOD.replace("0 3 * * *", "0 25 * * *"))
    assert main(["config", "check", str(path)]) == 2
    assert "forgeci.toml: schedules[0].cron: expected a cron expression" in capsys.readouterr().err
