"""The reliability suite's fixtures: the `report` rows behind `make reliability`'s table."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from tests.reliability.report import REPORT_ENV, Row


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" or (report.when == "setup" and report.failed):
        item.stash[_OUTCOME] = report.outcome


_OUTCOME = pytest.StashKey[str]()


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Iterator[Callable[[str], Row]]:
    """report(fault) -> a Row the test fills in; written out, with the test's outcome, when the test ends."""
    rows: list[Row] = []

    def row(fault: str) -> Row:
        rows.append(Row(fault, test=request.node.name))
        return rows[-1]

    yield row
    target = os.environ.get(REPORT_ENV)
    if target:
        outcome = request.node.stash.get(_OUTCOME, "failed")
        with open(Path(target), "a") as out:
            for made in rows:
                made.outcome = outcome
                out.write(made.to_json() + "\n")
