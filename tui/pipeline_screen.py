"""The pipeline screen: a pipeline's jobs grouped by dependency depth, live, each opening its job screen and log."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Static

from client.errors import ClientError
from client.models import PipelineInfo, PipelineJob, PipelineServerEvent, ServerEvent
from tui import format as fmt
from tui.messages import CancelPipeline, OpenJob, RequestFailed, RetryPipeline
from tui.models import Services, apply_job_event, pipeline_named
from tui.pipelines_panel import jobs_progress, pipeline_duration
from tui.widgets import StatusBar

RELOAD_DELAY = 0.3  # one fetch per burst of events: wait reasons and durations come from the server
# Sized for 80 columns: a matrix member's whole name (`test (python=3.12, db=postgres)`); the note is cut
# short, the line under the table says it in full.
JOB_COLUMNS = (("stage", "stage", 5), ("job", "job", 31), ("state", "state", 10), ("duration", "time", 7),
               ("note", "note", 15))


def job_duration(job: PipelineJob, now: float) -> float | None:
    return job.duration if job.duration is not None else fmt.elapsed(job.started_at, job.finished_at, now)


def job_note(job: PipelineJob) -> Text:
    """What the row says beside the state: why a queued job waits, why a job failed, or what it came after."""
    if job.state == "queued":
        reason = job.wait_reason or (f"waits for {', '.join(job.needs)}" if job.waiting and job.needs else "")
        return Text(reason, "yellow")
    if job.error and job.state != "success":
        return Text(job.error, "red")
    return Text(f"after {', '.join(job.needs)}" if job.needs else "", "dim")


def in_stages(jobs: tuple[PipelineJob, ...]) -> list[PipelineJob]:
    """The jobs stage by stage (dependency depth), each stage in planning order."""
    return sorted(jobs, key=lambda job: (job.depth, job.id))


class PipelineScreen(Screen[None]):
    """One pipeline: what triggered it, and its jobs stage by stage with states, durations and wait reasons."""

    DEFAULT_CSS = """
    #pipeline-head { height: auto; max-height: 3; padding: 0 1; background: $boost; }
    #pipeline-jobs { height: 1fr; }
    #pipeline-job-detail { height: 2; padding: 0 1; background: $boost; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("enter", "open_job", "Open the job and its log"),
        Binding("c", "cancel_pipeline", "Cancel"),
        Binding("r", "retry_pipeline", "Retry"),
        Binding("R", "retry_pipeline(True)", "Retry the failed jobs"),
    ]

    def __init__(self, pipeline_id: int, services: Services) -> None:
        super().__init__()
        self.pipeline_id = pipeline_id
        self.services = services
        self.api = services.client
        self.clock = services.clock
        self.pipeline: PipelineInfo | None = None
        self._reload_timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield StatusBar(self.services.client.server)
        yield Static(f"pipeline #{self.pipeline_id}: loading…", id="pipeline-head")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="pipeline-jobs")
        yield Static("", id="pipeline-job-detail")
        yield Footer()

    def on_mount(self) -> None:
        table = self.table
        for key, label, width in JOB_COLUMNS:
            table.add_column(label, width=width, key=key)
        table.focus()
        self.services.job_events.subscribe(self, self.on_job_event)
        self.services.pipeline_events.subscribe(self, self.on_pipeline_event)
        self.services.resync.subscribe(self, lambda _: self.reload())
        self.set_interval(1.0, self._tick)
        self.reload()

    @property
    def table(self) -> DataTable[object]:
        return self.query_one("#pipeline-jobs", DataTable)

    # -- the pipeline ---------------------------------------------------------------------------------

    def reload(self) -> None:
        self._load()

    @work(exclusive=True, group="pipeline")
    async def _load(self) -> None:
        try:
            pipeline = await self.api.pipeline(self.pipeline_id)
        except ClientError as exc:
            if exc.status == 404:
                self.query_one("#pipeline-head", Static).update(Text(f"pipeline #{self.pipeline_id} does not exist",
                                                                     "red"))
            self.post_message(RequestFailed(exc))
            return
        self.show_pipeline(pipeline)

    def show_pipeline(self, pipeline: PipelineInfo) -> None:
        """Every row again, the selected job staying selected."""
        self.pipeline = pipeline
        self._render_head()
        table = self.table
        selected = self.selected
        table.clear()
        now, stage = self.clock(), None
        for job in in_stages(pipeline.jobs):
            label = str(job.depth + 1) if job.depth != stage else ""  # the stage's number on its first row only
            stage = job.depth
            table.add_row(label, job.display, self._state(job),
                          fmt.duration(job_duration(job, now)), job_note(job), key=str(job.id))
        if selected is not None and any(j.id == selected.id for j in pipeline.jobs):
            table.move_cursor(row=table.get_row_index(str(selected.id)), animate=False)
        self._render_detail()

    def _state(self, job: PipelineJob) -> Text:
        # The job list does not say which running jobs are being stopped; a pipeline being cancelled stops them all.
        stopping = job.cancel_requested or (self.pipeline is not None and self.pipeline.cancel_requested)
        return fmt.state_text(job.state, stopping)

    @property
    def selected(self) -> PipelineJob | None:
        table = self.table
        if self.pipeline is None or not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((j for j in self.pipeline.jobs if str(j.id) == key), None)

    def _render_head(self) -> None:
        p = self.pipeline
        if p is None:
            return
        now, stages = self.clock(), len({job.depth for job in p.jobs})
        head = Text.assemble(  # what it is on one line, how it goes on the next: neither wraps at 80 columns
            (f"pipeline #{p.id} ", "bold"), (fmt.short_repo(p.repo), "bold"), f" {fmt.short_ref(p.ref)}",
            f" @ {fmt.short_sha(p.sha)}", ("  event ", "dim"), p.event or fmt.NONE, "\n",
            fmt.state_text(p.state, p.cancel_requested), f"  {jobs_progress(p)} jobs done",
            ("  time ", "dim"), fmt.duration(pipeline_duration(p, now)), ("  created ", "dim"),
            fmt.ago(p.created_at or None, now), ("  stages ", "dim"), str(stages),
        )
        if p.error:
            head.append(f"\n{p.error}", "red")
        self.query_one("#pipeline-head", Static).update(head)

    def _render_detail(self) -> None:
        """The highlighted job in full: the cells above cut long names, reasons and errors short."""
        detail = self.query_one("#pipeline-job-detail", Static)
        job = self.selected
        if job is None:
            planning = self.pipeline is not None and self.pipeline.state == "planning"
            detail.update(Text("planning: its jobs appear once the server has read the pipeline file"
                               if planning else "", "dim"))
            return
        text = Text.assemble((f"#{job.id} {job.display}", "bold"), ("  stage ", "dim"), str(job.depth + 1),
                             ("  attempt ", "dim"), str(job.attempts) if job.attempts else fmt.NONE,
                             ("  needs ", "dim"), ", ".join(job.needs) or fmt.NONE, "\n")
        note = job_note(job)
        text.append_text(note if note.plain and not note.plain.startswith("after ") else Text("enter: its log", "dim"))
        detail.update(text)

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        self._render_detail()

    def _tick(self) -> None:
        """Advance the running jobs' and the pipeline's durations on the local clock (no request)."""
        if self.pipeline is None or self.pipeline.terminal:
            return
        self._render_head()
        now = self.clock()
        for job in self.pipeline.jobs:
            if job.state == "running":
                self.table.update_cell(str(job.id), "duration", fmt.duration(job_duration(job, now)))

    # -- live -----------------------------------------------------------------------------------------

    def on_job_event(self, event: ServerEvent) -> None:
        p = self.pipeline
        if p is None:
            return
        job = next((j for j in p.jobs if j.id == event.job_id), None)
        if job is not None:
            job = apply_job_event(job, event)
            jobs = tuple(job if j.id == job.id else j for j in p.jobs)
            self.pipeline = replace(p, jobs=jobs, jobs_done=sum(j.terminal for j in jobs))
            table = self.table
            table.update_cell(str(job.id), "state", self._state(job))
            table.update_cell(str(job.id), "duration", fmt.duration(job_duration(job, self.clock())))
            table.update_cell(str(job.id), "note", job_note(job))
            self._render_head()
            self._render_detail()
            self.schedule_reload()
        elif pipeline_named(event) == self.pipeline_id:  # jobs planned, or its failed jobs queued again
            self.schedule_reload()

    def on_pipeline_event(self, event: PipelineServerEvent) -> None:
        if event.pipeline_id != self.pipeline_id:
            return
        if self.pipeline is not None:
            self.pipeline = replace(self.pipeline, state=event.state)
            self._render_head()
        self.schedule_reload()

    def schedule_reload(self) -> None:
        if self._reload_timer is None:
            self._reload_timer = self.set_timer(RELOAD_DELAY, self._timed_reload)

    def _timed_reload(self) -> None:
        self._reload_timer = None
        self.reload()

    # -- actions --------------------------------------------------------------------------------------

    @on(DataTable.RowSelected)
    def _open(self, message: DataTable.RowSelected) -> None:
        message.stop()
        if message.row_key.value is not None:
            self.post_message(OpenJob(int(message.row_key.value)))

    def action_open_job(self) -> None:
        if (job := self.selected) is not None:
            self.post_message(OpenJob(job.id))

    def action_back(self) -> None:
        self.dismiss()

    def action_cancel_pipeline(self) -> None:
        if self.pipeline is not None:
            self.post_message(CancelPipeline(self.pipeline))

    def action_retry_pipeline(self, failed_only: bool = False) -> None:
        if self.pipeline is not None:
            self.post_message(RetryPipeline(self.pipeline, failed_only))
