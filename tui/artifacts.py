"""The job view's artifact list: the files a finished job kept, with their sizes (hidden while it kept none)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual import work
from textual.widgets import Static

from client.api import Client
from client.artifacts import ArtifactInfo, list_artifacts
from client.errors import ClientError
from client.models import TERMINAL, JobInfo
from tui import format as fmt

SHOWN = 6  # files listed in the view; `forgeci artifacts JOB` lists them all


def artifact_text(found: Sequence[ArtifactInfo]) -> Text:
    text = Text()
    for artifact in found:
        if artifact.state != "kept":
            why = artifact.error if artifact.state == "not kept" else "its paths matched no file"
            text.append("artifacts ", "dim").append(f"none kept: {why}\n", "yellow")
            continue
        text.append("artifacts ", "dim").append(f"{len(artifact.files)} files, {fmt.size(artifact.total_size)}")
        text.append(f"  (forgeci artifacts {artifact.job_id} --download DIR)\n", "dim")
        for file in artifact.files[:SHOWN]:
            text.append(f"  {file.path}", "bold").append(f"  {fmt.size(file.size)}\n", "dim")
        if len(artifact.files) > SHOWN:
            text.append(f"  … and {len(artifact.files) - SHOWN} more\n", "dim")
    text.rstrip()
    return text


class ArtifactList(Static):
    """Loaded once the job has ended (a running job has kept nothing yet), and again if it ends anew (a retry)."""

    DEFAULT_CSS = "ArtifactList { height: auto; max-height: 9; padding: 0 1; display: none; }"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("", **kwargs)
        self._shown_for: tuple[int, str] | None = None

    def show_for(self, client: Client, job: JobInfo) -> None:
        if job.state not in TERMINAL or self._shown_for == (job.id, job.state):
            return
        self._shown_for = (job.id, job.state)
        self.load(client, job.id)

    @work(exclusive=True, group="artifacts")
    async def load(self, client: Client, job_id: int) -> None:
        try:
            found = await list_artifacts(client, job_id)
        except ClientError:
            return  # the job view works without its artifacts (an older server has no /artifacts)
        self.update(artifact_text(found))
        self.display = bool(found)
