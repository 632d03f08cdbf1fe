"""The coordinator's side of an agent's job log: numbered lines appended once each, whatever is resent.

An agent numbers its lines as the coordinator's log continues (the claim tells it the last number there), so a
batch sent again after a dropped connection or a coordinator restart is recognised line by line: a number the file
already has is skipped, the next one is appended, and a gap is refused. The file is the only record, so a
coordinator that restarts (or is killed) knows where it was.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bot.errors import HTTPError
from runner.logs import STREAMS, LogHub, LogLine, Masker, read_log


def parse_line(data: Any) -> LogLine:
    """One line of a batch; 400 when it is not {n, t, s, o, x} with the right types."""
    ok = (isinstance(data, Mapping) and type(data.get("n")) is int and data["n"] >= 1
          and isinstance(data.get("t"), (int, float)) and isinstance(data.get("s"), str)
          and data.get("o") in STREAMS and isinstance(data.get("x"), str))
    if not ok:
        raise HTTPError(400, "bad log line", "each line is {n: int >= 1, t: number, s: str, o: stream, x: str}")
    return LogLine(data["n"], float(data["t"]), data["s"], data["o"], data["x"])


class AgentLogs:
    """Appends agents' lines to the jobs' log files and publishes them; one per app, used from the loop."""

    def __init__(self, hub: LogHub | None, path_of: Any, masker: Masker | None = None) -> None:
        self.hub = hub
        self.masker = masker or Masker.empty()  # the server's secrets too: an agent masks only those it knows
        self._path_of = path_of  # job id -> its log file
        self._last: dict[int, int] = {}
        self._begun: set[int] = set()  # jobs whose log an agent writes now

    def last(self, job_id: int) -> int:
        if job_id not in self._last:
            self._end_torn_line(self._path(job_id))
            last = 0
            for line in read_log(self._path(job_id)):
                last = line.n
            if self.hub is not None:  # several coordinators: the agent may have sent earlier lines to another one
                last = max(last, self.hub.last_number(job_id))
            self._last[job_id] = last
        return self._last[job_id]

    @staticmethod
    def _end_torn_line(path: Path) -> None:
        """A crash mid-write tore the last line: end it, so the next line is whole (the torn one is skipped)."""
        try:
            with path.open("rb+") as file:
                size = file.seek(0, os.SEEK_END)
                if size:
                    file.seek(size - 1)
                    if file.read(1) != b"\n":
                        file.write(b"\n")
        except FileNotFoundError:
            pass

    def _path(self, job_id: int) -> Path:
        path: Path = self._path_of(job_id)
        return path

    def system(self, job_id: int, text: str) -> int:
        """A line of the coordinator's own in the job's log (before the agent's); returns its number."""
        n = self.last(job_id) + 1
        self.append(job_id, [LogLine(n, round(time.time(), 3), "", "system", text)])
        return n

    def append(self, job_id: int, lines: Iterable[LogLine]) -> int:
        """Append the lines the file lacks, in order; 409 at a gap. Returns the last number now in the file."""
        last = self.last(job_id)
        new: list[LogLine] = []
        for line in sorted(lines, key=lambda ln: ln.n):
            if line.n <= last:
                continue  # sent before: already there
            if line.n != last + 1:
                raise HTTPError(422, "log gap", f"line {line.n} sent but the log ends at line {last}; "
                                                f"send from line {last + 1}")
            new.append(dataclasses.replace(line, text=self.masker.mask(line.text)))
            last = line.n
        if new:
            path = self._path(job_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as file:
                file.write(b"".join(line.to_json().encode() + b"\n" for line in new))
            self._last[job_id] = last
            for line in new:
                if self.hub is not None:
                    self.hub.publish(job_id, line)
        return last

    def begin(self, job_id: int) -> None:
        self._last.pop(job_id, None)  # re-read: a server-side attempt may have written meanwhile
        self._begun.add(job_id)
        if self.hub is not None:
            self.hub.begin(job_id)

    def finish(self, job_id: int, *, only_begun: bool = False) -> None:
        """The agent's attempt is over: followers of the log end once the job is terminal."""
        if only_begun and job_id not in self._begun:
            return
        self._begun.discard(job_id)
        self._last.pop(job_id, None)
        if self.hub is not None:
            self.hub.finish(job_id)
