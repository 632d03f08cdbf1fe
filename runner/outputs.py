"""Job outputs: `KEY=VALUE` lines a step appends to `$FORGECI_OUTPUT`, handed to the jobs that need this one."""

from __future__ import annotations

import re
from pathlib import Path

from runner.logs import Masker

OUTPUT_FILE = ".forgeci-output"  # at the workspace's root; $FORGECI_OUTPUT names it inside the container
IN_CONTAINER = f"/workspace/{OUTPUT_FILE}"
MAX_BYTES = 64 * 1024  # per job: outputs are for versions, tags and flags, not artifacts
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,99}")


def read_outputs(workspace: Path, masker: Masker) -> tuple[dict[str, str], list[str]]:
    """The outputs the job's steps wrote, masked like log lines, and what was refused (for the job's log)."""
    path = workspace / OUTPUT_FILE
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return {}, []
    except OSError as exc:
        return {}, [f"outputs: cannot read $FORGECI_OUTPUT: {exc.strerror or exc}"]
    problems = []
    if len(data) > MAX_BYTES:
        problems.append(f"outputs: only the first {MAX_BYTES // 1024} KiB of $FORGECI_OUTPUT are kept")
        data = data[:MAX_BYTES]
    outputs: dict[str, str] = {}
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not _KEY.fullmatch(key.strip()):
            problems.append(f"outputs: line {number} of $FORGECI_OUTPUT is not KEY=VALUE; ignored")
            continue
        outputs[key.strip()] = masker.mask(value)
    return outputs, problems
