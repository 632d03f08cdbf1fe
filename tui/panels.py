"""The main screen's panels: jobs (live, filterable, sortable), queue (dispatch order), metrics, cache."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.timer import Timer
from textual.widgets import DataTable, Select, Sparkline, Static

from client.errors import ClientError
from client.models import STATES, TERMINAL, CacheEntry, JobInfo, ServerEvent
from client.usage import quota_text, quotas
from tui import format as fmt
from tui.job_table import JOB_COLUMNS, JobTable
from tui.messages import OpenJob, RequestFailed
from tui.models import Services, apply_event
from tui.screens import ConfirmScreen
from tui.widgets import RepoSelect

MAX_ROWS = 200  # jobs the jobs panel keeps; older ones drop off as new ones arrive
RANGES = ("hour", "day", "week")


class Panel(Vertical):
    """A panel that reloads from the server when shown, on a resync, and (debounced) on relevant job events."""

    RELOAD_DELAY = 0.3
    active = False  # the app sets it when its tab is shown
    stale = True

    def __init__(self, services: Services, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.services = services
        self.client = services.client
        self.clock = services.clock

    def on_mount(self) -> None:
        self._reload_timer: Timer | None = None
        self.services.job_events.subscribe(self, self.on_job_event)
        self.services.resync.subscribe(self, self.on_resync)

    def failed(self, error: ClientError) -> None:
        """A call failed: the app says so (and notices a server that is gone)."""
        self.post_message(RequestFailed(error))

    def shown(self) -> None:
        self.active = True
        if self.stale:
            self.reload()

    def hidden(self) -> None:
        self.active = False

    def on_resync(self, _: object) -> None:
        self.stale = True
        if self.active:
            self.reload()

    def on_job_event(self, event: ServerEvent) -> None:
        if self.concerns(event):
            self.schedule_reload()

    def schedule_reload(self) -> None:
        """Reload soon if shown (one reload per burst of events), else when next shown."""
        self.stale = True
        if self.active and self._reload_timer is None:
            self._reload_timer = self.set_timer(self.RELOAD_DELAY, self._timed_reload)

    def _timed_reload(self) -> None:
        self._reload_timer = None
        self.reload()

    def concerns(self, event: ServerEvent) -> bool:
        return False

    def reload(self) -> None:
        self.stale = False
        self.load()

    def load(self) -> None:
        raise NotImplementedError


class JobsPanel(Panel):
    """Every job, newest first: live from /events, filterable by state and repository, sortable by any column."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "sort", "Sort by the next column", show=False),
        Binding("S", "reverse", "Reverse the order", show=False),
        Binding("f", "filter", "Filter by state and repository", show=False),
        Binding("x", "clear_filters", "Clear the filters", show=False),
    ]

    def __init__(self, services: Services, **kwargs: Any) -> None:
        super().__init__(services, **kwargs)
        self.sort_column = "id"
        self.reverse = True
        self._load_started = 0.0
        self._touched: dict[int, float] = {}  # job id -> when an event last changed it

    def compose(self) -> ComposeResult:
        with Horizontal(id="filters"):
            yield Select([(s, s) for s in STATES], prompt="all states", compact=True, id="state-filter")
            yield RepoSelect(id="repo-filter")
            yield Static("", id="sort-label")
        yield JobTable(JOB_COLUMNS, self.clock, id="jobs-table")

    def on_mount(self) -> None:
        super().on_mount()
        self.set_interval(1.0, self.table.tick)
        self._show_sort()

    @property
    def table(self) -> JobTable:
        return self.query_one(JobTable)

    @property
    def state_filter(self) -> str | None:
        value = self.query_one("#state-filter", Select).value
        return value if isinstance(value, str) else None

    @property
    def repo_filter(self) -> str | None:
        value = self.query_one("#repo-filter", Select).value
        return value if isinstance(value, str) else None

    def matches(self, job: JobInfo) -> bool:
        return (self.state_filter in (None, job.state)) and (self.repo_filter in (None, job.repo))

    def load(self) -> None:
        self._fetch()

    @work(exclusive=True, group="jobs-list")
    async def _fetch(self) -> None:
        started = time.monotonic()
        try:
            page = await self.client.list_jobs(status=self.state_filter, repo=self.repo_filter, limit=MAX_ROWS)
        except ClientError as exc:
            self.stale = True
            self.failed(exc)
            return
        current = self.table.jobs
        jobs = [current[j.id] if self._touched.get(j.id, 0) > started and j.id in current else j for j in page.jobs]
        self._touched.clear()
        self.query_one("#repo-filter", RepoSelect).learn(j.repo for j in jobs)
        self.table.show(jobs)
        self.table.resort(self.sort_column, self.reverse)
        running = [j.id for j in jobs if j.state == "running"]
        for job_id in running:  # the list has no steps: one look each at the few running jobs
            self._fetch_job(job_id)

    @work(group="jobs-one")
    async def _fetch_job(self, job_id: int) -> None:
        try:
            job = await self.client.job(job_id)
        except ClientError as exc:
            if exc.status != 404:
                self.failed(exc)
            return
        known = self.table.jobs.get(job_id)
        if known is not None:  # keep what events told us about step progress
            job = replace(job, step_index=known.step_index if job.state == known.state else None,
                          step_total=known.step_total)
        self._place(job)

    def on_job_event(self, event: ServerEvent) -> None:
        self._touched[event.job_id] = time.monotonic()
        job = self.table.jobs.get(event.job_id)
        if job is None:
            if self.state_filter in (None, event.state):
                self._fetch_job(event.job_id)  # a new job (submitted, retried, from a webhook)
            return
        self._place(apply_event(job, event))

    def _place(self, job: JobInfo) -> None:
        table = self.table
        if not self.matches(job):
            table.drop(job.id)
            return
        self.query_one("#repo-filter", RepoSelect).learn([job.repo])
        table.upsert(job)
        while len(table.jobs) > MAX_ROWS:
            table.drop(min(table.jobs))
        table.resort(self.sort_column, self.reverse)


    @on(Select.Changed)
    def _filter_changed(self) -> None:
        self.reload()

    @on(DataTable.RowSelected)
    def _open(self, message: DataTable.RowSelected) -> None:
        if message.row_key.value is not None:
            self.post_message(OpenJob(int(message.row_key.value)))

    @on(DataTable.HeaderSelected)
    def _header(self, message: DataTable.HeaderSelected) -> None:
        column = str(message.column_key.value)
        self.reverse = not self.reverse if column == self.sort_column else column in ("id", "priority", "duration")
        self.sort_column = column
        self._resort()

    def action_sort(self) -> None:
        keys = list(JOB_COLUMNS)
        self.sort_column = keys[(keys.index(self.sort_column) + 1) % len(keys)]
        self.reverse = self.sort_column in ("id", "priority", "duration")
        self._resort()

    def action_reverse(self) -> None:
        self.reverse = not self.reverse
        self._resort()

    def action_filter(self) -> None:
        self.query_one("#state-filter", Select).focus()

    def action_clear_filters(self) -> None:
        for select in self.query(Select):
            select.clear()
        self.table.focus()

    def _resort(self) -> None:
        self.table.resort(self.sort_column, self.reverse)
        self._show_sort()

    def _show_sort(self) -> None:
        arrow = "↓" if self.reverse else "↑"
        self.query_one("#sort-label", Static).update(f"sort: {JOB_COLUMNS[self.sort_column][0]} {arrow}")


class QueuePanel(Panel):
    """Queued jobs in the order the runners will take them."""

    def compose(self) -> ComposeResult:
        yield Static("", id="queue-summary")
        yield JobTable(("id", "repo", "ref", "priority", "duration", "wait"), self.clock, id="queue-table")

    @property
    def table(self) -> JobTable:
        return self.query_one(JobTable)

    def concerns(self, event: ServerEvent) -> bool:
        return event.kind in ("state", "priority")

    def load(self) -> None:
        self._fetch()

    @work(exclusive=True, group="queue")
    async def _fetch(self) -> None:
        try:
            page = await self.client.list_jobs(order="dispatch", limit=MAX_ROWS)
        except ClientError as exc:
            self.stale = True
            self.failed(exc)
            return
        waiting = page.jobs
        now = self.clock()
        self.table.show(waiting)
        for job in waiting:  # in a queue, how long it has waited is what matters
            self.table.update_cell(str(job.id), "duration", fmt.duration(now - job.queued_at))
        more = "+" if page.next_cursor else ""
        self.query_one("#queue-summary", Static).update(
            f"{len(waiting)}{more} queued, in dispatch order (higher priority first, then oldest)")

    @on(DataTable.RowSelected)
    def _open(self, message: DataTable.RowSelected) -> None:
        if message.row_key.value is not None:
            self.post_message(OpenJob(int(message.row_key.value)))


class MetricsPanel(Panel, can_focus=True):
    """Headline numbers over an hour, a day or a week, and a sparkline of average durations."""

    RELOAD_DELAY = 2.0
    BINDINGS: ClassVar[list[BindingType]] = [Binding("t", "next_range", "Range")]

    def __init__(self, services: Services, **kwargs: Any) -> None:
        super().__init__(services, **kwargs)
        self.range = "day"

    def compose(self) -> ComposeResult:
        yield Static("", id="metrics-numbers")
        yield Static("average duration over time", id="sparkline-label")
        yield Sparkline([], id="durations")

    def concerns(self, event: ServerEvent) -> bool:
        return event.kind == "state"

    def load(self) -> None:
        self._fetch()

    @work(exclusive=True, group="metrics")
    async def _fetch(self) -> None:
        try:
            m = await self.client.metrics(self.range)
        except ClientError as exc:
            self.stale = True
            self.failed(exc)
            return
        states = "  ".join(f"{state} {count}" for state, count in m.by_state.items() if count)
        text = Text.assemble(
            (f"last {m.range}", "bold"), "   (t: hour/day/week)\n\n",
            ("jobs finished  ", "dim"), f"{m.jobs}\n",
            ("success rate   ", "dim"), f"{fmt.percent(m.success_rate)}\n",
            ("avg duration   ", "dim"), f"{fmt.duration(m.avg_duration)}\n",
            ("p95 duration   ", "dim"), f"{fmt.duration(m.p95_duration)}\n",
            ("cache hit rate ", "dim"), f"{fmt.percent(m.cache_hit_rate)}\n",
            ("queued now     ", "dim"), f"{m.queue_depth}\n",
            ("running now    ", "dim"), f"{m.running}\n",
            ("by state       ", "dim"), states or fmt.NONE,
        )
        try:  # a server without quotas (or from before them) shows none
            rules = await quotas(self.client)
        except ClientError:
            rules = []
        for rule in rules:
            text.append_text(Text.assemble(("\nquota          ", "dim"), quota_text(rule)))
        self.query_one("#metrics-numbers", Static).update(text)
        self.query_one(Sparkline).data = list(m.durations)
        self.query_one("#sparkline-label", Static).update(
            f"average duration per slice, oldest to newest (max {fmt.duration(max(m.durations, default=0))})")

    def action_next_range(self) -> None:
        self.range = RANGES[(RANGES.index(self.range) + 1) % len(RANGES)]
        self.reload()


class CachePanel(Panel):
    """Dependency-cache entries: sizes, hit counts, and deleting one."""

    RELOAD_DELAY = 2.0
    BINDINGS: ClassVar[list[BindingType]] = [Binding("d,delete", "delete_entry", "Delete entry")]

    def __init__(self, services: Services, **kwargs: Any) -> None:
        super().__init__(services, **kwargs)
        self.entries: dict[str, CacheEntry] = {}

    def compose(self) -> ComposeResult:
        yield Static("", id="cache-summary")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="cache-table")

    def on_mount(self) -> None:
        super().on_mount()
        table = self.query_one(DataTable)
        table.add_column("key", width=34, key="key")
        table.add_column("size", width=9, key="size")
        table.add_column("hits", width=5, key="hits")
        table.add_column("last used", width=12, key="last_used")

    def concerns(self, event: ServerEvent) -> bool:
        return event.kind == "state" and event.state in TERMINAL

    def load(self) -> None:
        self._fetch()

    @work(exclusive=True, group="cache")
    async def _fetch(self) -> None:
        try:
            stats = await self.client.cache_stats()
        except ClientError as exc:
            self.stale = True
            self.failed(exc)
            return
        self.entries = {e.key: e for e in stats.entries}
        table = self.query_one(DataTable)
        table.clear()
        now = self.clock()
        for e in sorted(stats.entries, key=lambda e: e.size, reverse=True):
            table.add_row(e.key, fmt.size(e.size), e.hits, fmt.ago(e.last_used, now), key=e.key)
        self.query_one("#cache-summary", Static).update(
            f"{len(stats.entries)} entries, {fmt.size(stats.total_size)}, hit rate {fmt.percent(stats.hit_rate)}"
            "   (d: delete)")

    @property
    def selected(self) -> CacheEntry | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self.entries.get(key) if key is not None else None

    def action_delete_entry(self) -> None:
        entry = self.selected
        if entry is None:
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._delete(entry.key)

        self.app.push_screen(ConfirmScreen(f"Delete cache entry {entry.key} ({fmt.size(entry.size)})?"), confirmed)

    @work(group="cache-delete")
    async def _delete(self, key: str) -> None:
        try:
            await self.client.delete_cache(key)
        except ClientError as exc:
            self.failed(exc)
            return
        self.notify(f"deleted cache entry {key}")
        self.reload()
