"""The reliability table: one row per fault a test injected, what happened, and the data loss it counted.

Tests fill rows through the `report` fixture; with FORGECI_RELIABILITY_REPORT set, each row is appended to that
file (JSON Lines) with its test's outcome, and `python -m tests.reliability.report FILE` prints the table.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.reliability.harness import Ledger, Loss, count_loss, plural

REPORT_ENV = "FORGECI_RELIABILITY_REPORT"


@dataclass
class Row:
    """A fault and its consequences. `lost` is only ever set from a count over the database (see `count`)."""

    fault: str
    happened: str = ""
    lost: str = ""
    lost_total: int | None = None
    outcome: str = ""
    test: str = ""

    def count(self, ledger: Ledger, db: Path) -> Loss:
        """Count acknowledged deliveries and jobs missing from the database; the row shows the result."""
        loss = count_loss(ledger, db)
        self.lost = str(loss)
        self.lost_total = loss.total
        return loss

    def nothing_stored(self, why: str) -> None:
        """For a fault where nothing is acknowledged or stored (a parser fuzz): there is nothing to count."""
        self.lost = f"n/a ({why})"
        self.lost_total = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def read_rows(path: Path) -> list[Row]:
    if not path.exists():
        return []
    return [Row(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


# The table's order, by the start of a row's fault (pytest runs the files alphabetically).
ORDER = ("Server crash", "Graceful stop", "Engine", "S3", "Load", "Hostile", "Secrets", "Security")


def _rank(row: Row) -> int:
    return next((i for i, prefix in enumerate(ORDER) if row.fault.startswith(prefix)), len(ORDER))


def render(rows: list[Row]) -> str:
    """A Markdown table; a failed test's row says so, and a row without a count says it was not counted."""

    def cell(text: str) -> str:
        return " ".join(text.split()).replace("|", "\\|")

    lines = ["| fault injected | what happened | data lost |", "|---|---|---|"]
    for row in sorted(rows, key=_rank):
        happened = row.happened or "(the test ended before saying)"
        # A row is counted last, once its own checks passed; its test may still fail later, on another row's.
        if row.lost_total is None:
            happened = f"**FAILED** ({row.test}): {happened}"
        elif row.outcome != "passed":
            happened = f"{happened} (**{row.test} failed after this row**)"
        lost = row.lost if row.lost_total is not None else "not counted (the test failed first)"
        lines.append(f"| {cell(row.fault)} | {cell(happened)} | {cell(lost)} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.reliability.report REPORT.jsonl", file=sys.stderr)
        return 2
    rows = read_rows(Path(argv[0]))
    if not rows:
        print("no reliability rows were recorded", file=sys.stderr)
        return 1
    print(render(rows))
    lost = sum(row.lost_total or 0 for row in rows)
    failed = [row for row in rows if row.lost_total is None]
    tests = {row.test for row in rows if row.outcome != "passed"}
    print(f"\n{plural(len(rows), 'fault')}, {len(failed)} failed, {lost} acknowledged items lost; "
          f"{plural(len(tests), 'test')} failed")
    return 1 if failed or tests or lost else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
