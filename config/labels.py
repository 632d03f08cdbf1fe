"""Runner labels: `runs_on` in the pipeline file, `runner.labels` for the embedded runner, `forgeci agent --labels`.

A job with `runs_on` is claimed only by a runner that has every one of its labels (as GitHub Actions' runs-on
with self-hosted labels); a job without it by any runner. A job no runner can take waits, it is never failed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from config.errors import ConfigError
from config.schema import matching, string_list

LABEL: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LABEL_RULE: Final = "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64"
MAX_LABELS: Final = 32
LABELS = string_list(matching(LABEL, f"a runner label ({LABEL_RULE})"), "array of runner labels")
RUNS_ON_DOC: Final = "runner labels a runner must all have to take the job; empty = any runner"


def parse_labels(text: str | Iterable[str], what: str = "--labels") -> tuple[str, ...]:
    """`linux,big` (or a list) -> ('big', 'linux'): sorted, without duplicates; ConfigError naming `what`."""
    items = text.split(",") if isinstance(text, str) else list(text)
    labels = sorted({str(item).strip() for item in items if str(item).strip()})
    bad = [label for label in labels if not LABEL.fullmatch(label)]
    if bad:
        raise ConfigError(f"{what}: {bad[0]!r} is not a runner label ({LABEL_RULE})")
    if len(labels) > MAX_LABELS:
        raise ConfigError(f"{what}: at most {MAX_LABELS} labels, got {len(labels)}")
    return tuple(labels)


def describe_labels(labels: Iterable[str]) -> str:
    return ", ".join(labels)
