"""The operator console: a Textual app over the HTTP API, live from /events, reconnecting by itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.reactive import reactive
from textual.signal import Signal
from textual.widgets import DataTable, Footer, TabbedContent, TabPane

from client.api import Client
from client.errors import AuthFailed, ClientError, ServerUnreachable
from client.models import JobInfo, PipelineServerEvent, ServerEvent, Submission
from tui.job_table import JobTable
from tui.messages import CancelJob, ChangePriority, OpenJob, RequestFailed, RetryJob
from tui.models import Services
from tui.agents_panel import AgentsPanel
from tui.panels import CachePanel, JobsPanel, MetricsPanel, Panel, QueuePanel
from tui.pipeline_actions import PipelineCommands
from tui.pipeline_screen import PipelineScreen
from tui.pipelines_panel import PipelinesPanel, PipelineTable
from tui.screens import ConfirmScreen, HelpScreen, JobScreen, PriorityScreen, SubmitScreen
from tui.widgets import StatusBar

RECONNECT_MIN, RECONNECT_MAX = 1.0, 10.0

CSS = """
#filters { height: 1; }
#filters Select { width: 22; margin-right: 1; }
#sort-label { width: 1fr; content-align: right middle; color: $text-muted; }
JobTable, #cache-table { height: 1fr; }
#queue-summary, #cache-summary { height: 1; color: $text-muted; }
#metrics-numbers { height: auto; padding: 0 1; }
#sparkline-label { margin-top: 1; padding: 0 1; color: $text-muted; }
#durations { height: 3; margin: 0 1; }
TabPane { padding: 0; }
#job-head { height: auto; max-height: 4; padding: 0 1; background: $boost; }
#steps { height: 2; }
#log-status { height: 1; background: $boost; color: $text-muted; padding: 0 1; }
#log { height: 1fr; }
#search { dock: bottom; margin-bottom: 1; }
ModalScreen { align: center middle; }
.dialog { width: 72; max-width: 100%; height: auto; max-height: 100%; border: thick $primary; background: $surface;
          padding: 0 1; }
.dialog .buttons { height: auto; align-horizontal: right; margin-top: 1; }
.dialog .buttons Button { margin-left: 1; }
.dialog .error { color: $error; height: auto; }
.dialog .title { text-style: bold; }
#submit-form Input { margin: 0; }
#help { width: 64; }
"""


class ForgeciApp(PipelineCommands):
    """`forgeci tui`: jobs, queue, metrics, cache and pipelines of one server; the client comes in, so tests pass
    their own."""

    TITLE = "forgeci"
    CSS = CSS
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
        Binding("n", "submit", "Submit job"),
        Binding("1", "tab('jobs')", "Jobs", show=False),
        Binding("2", "tab('queue')", "Queue", show=False),
        Binding("3", "tab('metrics')", "Metrics", show=False),
        Binding("4", "tab('cache')", "Cache", show=False),
        Binding("5", "tab('pipelines')", "Pipelines", show=False),
        Binding("6", "tab('agents')", "Agents", show=False),
        Binding("ctrl+r", "resync", "Reload everything", show=False),
    ]

    connection: reactive[str] = reactive("connecting")

    def __init__(self, client: Client, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.client = client
        self.clock = clock  # wall-clock seconds, to show how long jobs have run; tests pin it
        self.job_events: Signal[ServerEvent] = Signal(self, "job-events")
        self.resync: Signal[None] = Signal(self, "resync")
        self.pipeline_events: Signal[PipelineServerEvent] = Signal(self, "pipeline-events")
        self.services = Services(client, clock, self.job_events, self.resync, self.pipeline_events)

    def compose(self) -> ComposeResult:
        yield StatusBar(self.client.server)
        with TabbedContent(initial="jobs"):
            with TabPane("1 Jobs", id="jobs"):
                yield JobsPanel(self.services)
            with TabPane("2 Queue", id="queue"):
                yield QueuePanel(self.services)
            with TabPane("3 Metrics", id="metrics"):
                yield MetricsPanel(self.services)
            with TabPane("4 Cache", id="cache"):
                yield CachePanel(self.services)
            with TabPane("5 Pipelines", id="pipelines"):
                yield PipelinesPanel(self.services)
            with TabPane("6 Agents", id="agents"):
                yield AgentsPanel(self.services)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(JobsPanel).active = True
        self.query_one(JobTable).focus()
        self.follow_events()

    # -- the live connection --------------------------------------------------------------------------

    @work(exclusive=True, group="events")
    async def follow_events(self) -> None:
        """Hold /events open; on every (re)connection, have every panel reload what it shows."""
        delay = RECONNECT_MIN
        while True:
            try:
                async with self.client.events(pipelines=True) as events:
                    self._online()
                    delay = RECONNECT_MIN
                    async for event in events:
                        # Job views read job ids: a pipeline's event goes to the pipeline views alone.
                        if isinstance(event, PipelineServerEvent):
                            self.pipeline_events.publish(event)
                        else:
                            self.job_events.publish(event)
                raise ServerUnreachable(f"{self.client.server} closed the event stream")
            except ClientError as exc:
                self.report(exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    def _online(self) -> None:
        was, self.connection = self.connection, "online"
        if was in ("offline", "unauthorized"):
            self.notify(f"connected to {self.client.server} again")
        self.resync.publish(None)

    @on(RequestFailed)
    def _request_failed(self, message: RequestFailed) -> None:
        self.report(message.error)

    def report(self, exc: ClientError) -> None:
        """A failed call: a notification and, when the server is gone or refuses the token, the status bar."""
        if isinstance(exc, ServerUnreachable | AuthFailed):
            state = "offline" if isinstance(exc, ServerUnreachable) else "unauthorized"
            if self.connection != state:  # once per outage, not once per retry
                self.connection = state
                self.notify(str(exc), title="server unreachable" if state == "offline" else "token refused",
                            severity="error", timeout=8)
            return
        self.notify(str(exc), title="request failed", severity="error", timeout=8)

    # -- navigation -----------------------------------------------------------------------------------

    def action_tab(self, tab: str) -> None:
        if isinstance(self.screen, JobScreen | PipelineScreen):
            return
        self.query_one(TabbedContent).active = tab

    @on(TabbedContent.TabActivated)
    def _tab_shown(self, message: TabbedContent.TabActivated) -> None:
        for panel in self.query(Panel):
            panel.hidden()
        pane = message.pane
        panel = pane.query_one(Panel)
        panel.shown()
        tables = panel.query(DataTable)
        (tables.first() if tables else panel).focus()  # so that the panel's own keys work at once

    @on(OpenJob)
    def _open_job(self, message: OpenJob) -> None:
        self.open_job(message.job_id)

    def open_job(self, job_id: int) -> None:
        self.push_screen(JobScreen(job_id, self.services))

    def action_resync(self) -> None:
        self.resync.publish(None)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.help_sections()))

    def help_sections(self) -> list[tuple[str, list[BindingType]]]:
        moves = [b for b in DataTable.BINDINGS if isinstance(b, Binding) and b.key != "enter"]  # enter: Open
        log_moves = [Binding("up,down,pageup,pagedown", "", "scroll the log"),
                     Binding("home,end", "", "first line / last line (end follows the tail again)")]
        return [
            ("Everywhere", list(self.BINDINGS)),
            ("Jobs and queue tables", [*JobTable.BINDINGS, *moves]),
            ("Jobs panel", list(JobsPanel.BINDINGS)),
            ("Metrics panel", list(MetricsPanel.BINDINGS)),
            ("Cache panel", list(CachePanel.BINDINGS)),
            ("Pipelines panel", [*PipelineTable.BINDINGS, *PipelinesPanel.BINDINGS]),
            ("Pipeline screen", list(PipelineScreen.BINDINGS)),
            ("Job screen", [*JobScreen.BINDINGS, *log_moves]),
            ("Dialogs", [*ConfirmScreen.BINDINGS, Binding("enter", "", "submit a form"),
                         Binding("tab,shift+tab", "", "next / previous field")]),
        ]

    # -- actions on jobs ------------------------------------------------------------------------------

    @on(CancelJob)
    def _cancel_job(self, message: CancelJob) -> None:
        self.cancel_job(message.job)

    @on(RetryJob)
    def _retry_job(self, message: RetryJob) -> None:
        self.retry_job(message.job, message.from_failed_step)

    @on(ChangePriority)
    def _change_priority(self, message: ChangePriority) -> None:
        self.change_priority(message.job)

    def cancel_job(self, job: JobInfo) -> None:
        if job.terminal:
            self.notify(f"job #{job.id} is already {job.state}", severity="warning")
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._cancel(job.id)

        self.push_screen(ConfirmScreen(f"Cancel job #{job.id} ({job.state})?"), confirmed)

    @work(group="actions")
    async def _cancel(self, job_id: int) -> None:
        try:
            state = await self.client.cancel(job_id)
        except ClientError as exc:
            self.report(exc)
            return
        what = "stopping" if state == "running" else state or "cancelled"
        self.notify(f"job #{job_id}: {what}")

    def retry_job(self, job: JobInfo, from_failed_step: bool = False) -> None:
        if not job.terminal:
            self.notify(f"job #{job.id} is {job.state}: only a finished job can be retried", severity="warning")
            return
        self._retry(job.id, from_failed_step)

    @work(group="actions")
    async def _retry(self, job_id: int, from_failed_step: bool) -> None:
        try:
            new_id = await self.client.retry(job_id, from_failed_step=from_failed_step)
        except ClientError as exc:
            self.report(exc)
            return
        how = " from its failed step" if from_failed_step else ""
        self.notify(f"job #{new_id} queued: a retry of #{job_id}{how}")

    def change_priority(self, job: JobInfo) -> None:
        if job.state != "queued":
            self.notify(f"job #{job.id} is {job.state}: only a queued job's priority can change", severity="warning")
            return

        def chosen(priority: int | None) -> None:
            if priority is not None and priority != job.priority:
                self._set_priority(job.id, priority)

        self.push_screen(PriorityScreen(job), chosen)

    @work(group="actions")
    async def _set_priority(self, job_id: int, priority: int) -> None:
        try:
            await self.client.set_priority(job_id, priority)
        except ClientError as exc:
            self.report(exc)
            return
        self.notify(f"job #{job_id}: priority {priority}")

    def action_submit(self) -> None:
        self.push_screen(SubmitScreen(self.client), self._submitted)

    def _submitted(self, submitted: Submission | None) -> None:
        if submitted is None:
            return
        if submitted.job is None:  # its jobs appear in the list as they are planned (the events name them)
            self.notify(f"pipeline #{submitted.pipeline} submitted, still planning: the server could not fetch "
                        f"its repository yet and keeps trying", severity="warning")
        elif len(submitted.jobs) == 1:
            self.notify(f"job #{submitted.job} submitted")
        else:
            self.notify(f"pipeline #{submitted.pipeline} submitted: {len(submitted.jobs)} jobs, "
                        f"#{submitted.jobs[0]}..#{submitted.jobs[-1]}")

