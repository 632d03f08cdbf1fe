"""The table of jobs the jobs and queue panels show: its columns, rows kept by job id, and the job actions."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from textual.binding import Binding, BindingType
from textual.widgets import DataTable

from client.models import STATES, JobInfo
from tui import format as fmt
from tui.messages import CancelJob, ChangePriority, RetryJob
from tui.models import job_duration, step_progress

# Column key -> (label, width, cell of (job, now), sort key of (job, now))
Column = tuple[str, int, Callable[[JobInfo, float], Any], Callable[[JobInfo, float], Any]]
JOB_COLUMNS: dict[str, Column] = {
    "id": ("#", 5, lambda j, _: j.id, lambda j, _: j.id),
    "repo": ("repository", 16, lambda j, _: fmt.short_repo(j.repo), lambda j, _: fmt.short_repo(j.repo).lower()),
    "ref": ("ref", 10, lambda j, _: fmt.short_ref(j.ref), lambda j, _: fmt.short_ref(j.ref).lower()),
    "sha": ("sha", 7, lambda j, _: fmt.short_sha(j.sha), lambda j, _: j.sha or ""),
    "state": ("state", 10, lambda j, _: fmt.state_text(j.state, j.cancel_requested),
              lambda j, _: STATES.index(j.state) if j.state in STATES else len(STATES)),
    "priority": ("pri", 3, lambda j, _: j.priority, lambda j, _: j.priority),
    "duration": ("time", 7, lambda j, now: fmt.duration(job_duration(j, now)),
                 lambda j, now: job_duration(j, now) or 0.0),
    "step": ("step", 5, lambda j, _: step_progress(j), lambda j, _: (j.step_index or 0, j.step_total or 0)),
}
# Every column a job table may show: the jobs panel's, and the queue panel's "why it waits" (its needs, its group,
# max_parallel, no free slot).
ALL_COLUMNS: dict[str, Column] = {
    **JOB_COLUMNS,
    "wait": ("waits because", 24, lambda j, _: j.wait_reason or "", lambda j, _: j.wait_reason or ""),
}


class JobTable(DataTable[Any]):
    """A table of jobs keyed by id, with the job actions on the selected row."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Open"),
        Binding("c", "cancel_job", "Cancel"),
        Binding("r", "retry_job", "Retry"),
        Binding("R", "retry_job(True)", "Retry from the failed step", show=False),
        Binding("p", "priority", "Change priority (queued)", show=False),
    ]

    def __init__(self, columns: Iterable[str], clock: Callable[[], float], **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.column_keys = tuple(columns)
        self.clock = clock
        self.jobs: dict[int, JobInfo] = {}

    def on_mount(self) -> None:
        for key in self.column_keys:
            label, width, _, _ = ALL_COLUMNS[key]
            self.add_column(label, width=width, key=key)

    @property
    def selected(self) -> JobInfo | None:
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        return self.jobs.get(int(key)) if key is not None else None

    def show(self, jobs: Iterable[JobInfo]) -> None:
        """Replace every row, keeping the selected job selected."""
        selected = self.selected
        self.jobs = {job.id: job for job in jobs}
        self.clear()
        for job in self.jobs.values():
            self.add_row(*self._cells(job), key=str(job.id))
        self._reselect(selected)

    def upsert(self, job: JobInfo) -> None:
        known = job.id in self.jobs
        self.jobs[job.id] = job
        if known:
            for key, cell in zip(self.column_keys, self._cells(job)):
                self.update_cell(str(job.id), key, cell)
        else:
            self.add_row(*self._cells(job), key=str(job.id))

    def drop(self, job_id: int) -> None:
        if self.jobs.pop(job_id, None) is not None:
            self.remove_row(str(job_id))

    def resort(self, column: str, reverse: bool) -> None:
        selected = self.selected
        sort_key, now = ALL_COLUMNS[column][3], self.clock()
        self.sort("id", key=lambda job_id: sort_key(self.jobs[job_id], now), reverse=reverse)
        self._reselect(selected)

    def tick(self) -> None:
        """Advance the running jobs' durations (local arithmetic, no request)."""
        if "duration" in self.column_keys:
            now = self.clock()
            for job in self.jobs.values():
                if job.state == "running":
                    self.update_cell(str(job.id), "duration", fmt.duration(job_duration(job, now)))

    def _cells(self, job: JobInfo) -> list[Any]:
        now = self.clock()
        return [ALL_COLUMNS[key][2](job, now) for key in self.column_keys]

    def _reselect(self, job: JobInfo | None) -> None:
        if job is not None and job.id in self.jobs:
            self.move_cursor(row=self.get_row_index(str(job.id)), animate=False)

    def action_cancel_job(self) -> None:
        if (job := self.selected) is not None:
            self.post_message(CancelJob(job))

    def action_retry_job(self, from_failed_step: bool = False) -> None:
        if (job := self.selected) is not None:
            self.post_message(RetryJob(job, from_failed_step))

    def action_priority(self) -> None:
        if (job := self.selected) is not None:
            self.post_message(ChangePriority(job))
