"""The pipelines panel: every pipeline, newest first, live from /events, filterable, with the pipeline actions."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import DataTable, Select, Static

from client.errors import ClientError
from client.models import PipelineInfo, PipelineServerEvent, ServerEvent
from tui import format as fmt
from tui.messages import CancelPipeline, OpenPipeline, RetryPipeline
from tui.models import Services, pipeline_named
from tui.panels import Panel
from tui.widgets import RepoSelect

PIPELINE_STATES = ("planning", "queued", "running", "success", "failure", "cancelled", "skipped",  # to filter by
                   "error")
MAX_PIPELINES = 100  # rows the panel asks for; the summary says when there are more


def pipeline_duration(pipeline: PipelineInfo, now: float) -> float | None:
    """How long the pipeline ran, or has been running until `now`."""
    if pipeline.duration is not None:
        return pipeline.duration
    return fmt.elapsed(pipeline.started_at, pipeline.finished_at, now)


def jobs_progress(pipeline: PipelineInfo) -> str:
    """`3/8`: jobs done of all its jobs; a dash while it is planned."""
    return f"{pipeline.jobs_done}/{pipeline.jobs_total}" if pipeline.jobs_total else fmt.NONE


# Column key -> (label, width, cell of (pipeline, now))
PipelineColumn = tuple[str, int, Callable[[PipelineInfo, float], Any]]
PIPELINE_COLUMNS: dict[str, PipelineColumn] = {
    "id": ("#", 5, lambda p, _: p.id),
    "repo": ("repository", 16, lambda p, _: fmt.short_repo(p.repo)),
    "ref": ("ref", 14, lambda p, _: fmt.short_ref(p.ref)),
    "sha": ("sha", 7, lambda p, _: fmt.short_sha(p.sha)),
    "state": ("state", 10, lambda p, _: fmt.state_text(p.state, p.cancel_requested)),
    "jobs": ("jobs", 5, lambda p, _: Text(jobs_progress(p), justify="right")),
    "duration": ("time", 7, lambda p, now: fmt.duration(pipeline_duration(p, now))),
}


class PipelineTable(DataTable[Any]):
    """A table of pipelines keyed by id, with the pipeline actions on the selected row."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Open"),
        Binding("c", "cancel_pipeline", "Cancel"),
        Binding("r", "retry_pipeline", "Retry"),
        Binding("R", "retry_pipeline(True)", "Retry the failed jobs"),
    ]

    def __init__(self, clock: Callable[[], float], **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.clock = clock
        self.pipelines: dict[int, PipelineInfo] = {}

    def on_mount(self) -> None:
        for key, (label, width, _) in PIPELINE_COLUMNS.items():
            self.add_column(label, width=width, key=key)

    @property
    def selected(self) -> PipelineInfo | None:
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        return self.pipelines.get(int(key)) if key is not None else None

    def show(self, pipelines: Iterable[PipelineInfo]) -> None:
        """Replace every row, keeping the selected pipeline selected."""
        selected = self.selected
        self.pipelines = {p.id: p for p in pipelines}
        self.clear()
        now = self.clock()
        for pipeline in self.pipelines.values():
            self.add_row(*(cell(pipeline, now) for _, _, cell in PIPELINE_COLUMNS.values()), key=str(pipeline.id))
        if selected is not None and selected.id in self.pipelines:
            self.move_cursor(row=self.get_row_index(str(selected.id)), animate=False)

    def holding(self, job_id: int) -> PipelineInfo | None:
        """The listed pipeline that job `job_id` belongs to."""
        return next((p for p in self.pipelines.values() if job_id in p.job_ids), None)

    def tick(self) -> None:
        """Advance the running pipelines' durations (local arithmetic, no request)."""
        now = self.clock()
        for pipeline in self.pipelines.values():
            if pipeline.state == "running":
                self.update_cell(str(pipeline.id), "duration", fmt.duration(pipeline_duration(pipeline, now)))

    def action_cancel_pipeline(self) -> None:
        if (pipeline := self.selected) is not None:
            self.post_message(CancelPipeline(pipeline))

    def action_retry_pipeline(self, failed_only: bool = False) -> None:
        if (pipeline := self.selected) is not None:
            self.post_message(RetryPipeline(pipeline, failed_only))


class PipelinesPanel(Panel):
    """Every pipeline, newest first: its jobs done of all, its state and time; live, filterable by state and repo."""

    DEFAULT_CSS = """
    #pipeline-filters { height: 1; }
    #pipeline-filters Select { width: 22; margin-right: 1; }
    #pipelines-summary { width: 1fr; content-align: right middle; color: $text-muted; }
    PipelineTable { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f", "filter", "Filter by state and repository", show=False),
        Binding("x", "clear_filters", "Clear the filters", show=False),
    ]

    def __init__(self, services: Services, **kwargs: Any) -> None:
        super().__init__(services, **kwargs)
        self.api = services.client

    def compose(self) -> ComposeResult:
        with Horizontal(id="pipeline-filters"):
            yield Select([(s, s) for s in PIPELINE_STATES], prompt="all states", compact=True,
                         id="pipeline-state-filter")
            yield RepoSelect(id="pipeline-repo-filter")
            yield Static("", id="pipelines-summary")
        yield PipelineTable(self.clock, id="pipelines-table")

    def on_mount(self) -> None:
        super().on_mount()
        self.services.pipeline_events.subscribe(self, self.on_pipeline_event)
        self.set_interval(1.0, self.table.tick)

    @property
    def table(self) -> PipelineTable:
        return self.query_one(PipelineTable)

    def _filter(self, which: str) -> str | None:
        value = self.query_one(f"#pipeline-{which}-filter", Select).value
        return value if isinstance(value, str) else None

    def concerns(self, event: ServerEvent) -> bool:
        """A job's state changes its pipeline's counts; a queued job of no listed pipeline may be a new one."""
        if event.kind != "state":
            return False
        return self.table.holding(event.job_id) is not None or event.state == "queued" or \
            pipeline_named(event) is not None

    def on_pipeline_event(self, _: PipelineServerEvent) -> None:
        self.schedule_reload()

    def load(self) -> None:
        self._fetch()

    @work(exclusive=True, group="pipelines-list")
    async def _fetch(self) -> None:
        summary = self.query_one("#pipelines-summary", Static)
        try:
            page = await self.api.pipelines(status=self._filter("state"), repo=self._filter("repo"),
                                            limit=MAX_PIPELINES)
        except ClientError as exc:
            self.stale = True
            if exc.status == 404:  # a server from before the pipelines API: say so once, here, not in a toast
                summary.update("this server does not list pipelines")
                return
            self.failed(exc)
            return
        self.query_one("#pipeline-repo-filter", RepoSelect).learn(p.repo for p in page.pipelines)
        self.table.show(page.pipelines)
        more = "+" if page.next_cursor else ""
        count = len(page.pipelines)
        summary.update(f"{count}{more} pipeline{'' if count == 1 and not more else 's'}, newest first")


    @on(Select.Changed)
    def _filter_changed(self) -> None:
        self.reload()

    @on(DataTable.RowSelected)
    def _open(self, message: DataTable.RowSelected) -> None:
        if message.row_key.value is not None:
            self.post_message(OpenPipeline(int(message.row_key.value)))

    def action_filter(self) -> None:
        self.query_one("#pipeline-state-filter", Select).focus()

    def action_clear_filters(self) -> None:
        for select in self.query(Select):
            select.clear()
        self.table.focus()
