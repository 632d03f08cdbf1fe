"""The job screen (steps, cache, live log with search) and the modal screens: confirm, priority, submit, help."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.timer import Timer
from textual.widgets import Button, DataTable, Footer, Input, Label, Static

from client.api import Client
from client.errors import ClientError
from client.models import MAX_PRIORITY, MIN_PRIORITY, JobInfo, LogEnd, ServerEvent, Submission
from tui import format as fmt
from tui.artifacts import ArtifactList
from tui.messages import CancelJob, ChangePriority, RequestFailed, RetryJob
from tui.models import Services, apply_event, job_duration
from tui.submit_inputs import InputsForm
from tui.widgets import LogView, StatusBar

RECONNECT_MIN, RECONNECT_MAX = 1.0, 10.0
SHA = re.compile(r"[0-9a-fA-F]{7,40}")


def attempts_text(attempts: object) -> str:
    """`#1 agent big:b1 (retried), #2 embedded on host-a`: the runner of each attempt (`/jobs/status`)."""
    if not isinstance(attempts, list):
        return ""
    parts = []
    for item in attempts:
        if isinstance(item, dict) and isinstance(item.get("attempt"), int):
            state = item.get("state")
            parts.append(f"#{item['attempt']} {item.get('on') or '?'}" + (" (retried)" if state == "retried" else ""))
    return ", ".join(parts)


class JobScreen(Screen[None]):
    """One job: what it is, its steps, its cache and snapshot, and its log following the tail."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("c", "cancel_job", "Cancel"),
        Binding("r", "retry_job", "Retry"),
        Binding("R", "retry_job(True)", "Retry from the failed step", show=False),
        Binding("p", "priority", "Change priority (queued)", show=False),
        Binding("slash", "search", "Search the log", key_display="/"),
        Binding("n", "next_match", "Next match", show=False),
        Binding("N", "next_match(True)", "Previous match", show=False),
        Binding("f", "follow", "Follow the tail", show=False),
    ]

    def __init__(self, job_id: int, services: Services) -> None:
        super().__init__()
        self.job_id = job_id
        self.services = services
        self.client = services.client
        self.clock = services.clock
        self.job: JobInfo | None = None
        self.last_line = 0
        self.log_ended = False
        self._reload_timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield StatusBar(self.client.server)
        yield Static(f"job #{self.job_id}: loading…", id="job-head")
        yield DataTable(cursor_type="none", zebra_stripes=True, id="steps")
        yield ArtifactList(id="artifacts")
        yield Static("", id="log-status")
        yield LogView(id="log")
        yield Input(placeholder="search the log (enter: find, escape: close)", compact=True, id="search")
        yield Footer()

    def on_mount(self) -> None:
        steps = self.query_one("#steps", DataTable)
        for key, label, width in (("index", "#", 2), ("name", "step", 24), ("state", "state", 10),
                                  ("exit", "exit", 4), ("duration", "time", 8)):
            steps.add_column(label, width=width, key=key)
        self.query_one("#search", Input).display = False
        view = self.query_one(LogView)
        view.focus()
        self.watch(view, "following", lambda _: self._log_status(), init=False)
        self.services.job_events.subscribe(self, self.on_job_event)
        self.services.resync.subscribe(self, self.on_resync)
        self.set_interval(1.0, self._tick)
        self.load_job()
        self.follow_log()

    # -- the job --------------------------------------------------------------------------------------

    @work(exclusive=True, group="job")
    async def load_job(self) -> None:
        try:
            job = await self.client.job(self.job_id)
        except ClientError as exc:
            self.post_message(RequestFailed(exc))
            return
        if self.job is not None:  # keep the step progress only events tell
            job = replace(job, step_total=self.job.step_total)
        self.show_job(job)

    def show_job(self, job: JobInfo) -> None:
        self.job = job
        self._render_head()
        table = self.query_one("#steps", DataTable)
        table.clear()
        now = self.clock()
        for step in job.steps:
            took = step.duration if step.duration is not None else fmt.elapsed(step.started_at, None, now)
            table.add_row(step.index + 1, step.name, fmt.state_text(step.state),
                          fmt.NONE if step.exit_code is None else step.exit_code, fmt.duration(took),
                          key=str(step.index))
        table.styles.height = min(len(job.steps), 5) + 1
        self.query_one(ArtifactList).show_for(self.client, job)

    def _render_head(self) -> None:
        job = self.job
        if job is None:
            return
        colour = {"all": "green", "some": "yellow", "none": "yellow"}.get(job.cache or "")
        cache = Text(job.cache_text, colour) if colour else Text(fmt.NONE)
        if job.snapshot:
            snap = f"{job.snapshot.get('key', 'yes')} ({fmt.size(int(job.snapshot.get('size') or 0))})"
        else:
            snap = fmt.NONE
        steps = f"{job.step_index + 1}/{job.step_total}" if job.step_total and job.step_index is not None else ""
        head = Text.assemble(
            (f"#{job.id} ", "bold"), (fmt.short_repo(job.repo), "bold"), f" {fmt.short_ref(job.ref)}",
            f" @ {fmt.short_sha(job.sha)}  ", fmt.state_text(job.state, job.cancel_requested),
            f" {steps}  {fmt.duration(job_duration(job, self.clock()))}\n",
            ("priority ", "dim"), str(job.priority), ("  attempt ", "dim"), str(job.attempts),
            ("  cache ", "dim"), cache, ("  snapshot ", "dim"), snap,
        )
        ran_on = attempts_text(job.raw.get("attempts_on"))
        if ran_on:
            head.append_text(Text.assemble("\n", ("ran on ", "dim"), ran_on))
        if job.error:
            head.append(f"\n{job.error}", "red")
        self.query_one("#job-head", Static).update(head)

    def _tick(self) -> None:
        """Advance the running job's and step's durations on the local clock (no request)."""
        if self.job is None or self.job.state != "running":
            return
        self._render_head()
        now, table = self.clock(), self.query_one("#steps", DataTable)
        for step in self.job.steps:
            if step.duration is None and step.started_at is not None:
                table.update_cell(str(step.index), "duration", fmt.duration(fmt.elapsed(step.started_at, None, now)))

    def on_job_event(self, event: ServerEvent) -> None:
        if event.job_id != self.job_id or self.job is None:
            return
        self.job = apply_event(self.job, event)
        self._render_head()
        if self._reload_timer is None:  # steps, exit codes, cache: one fetch per burst of events
            self._reload_timer = self.set_timer(0.2, self._timed_reload)

    def _timed_reload(self) -> None:
        self._reload_timer = None
        self.load_job()

    def on_resync(self, _: object) -> None:
        self.load_job()
        if not self.log_ended:
            self.follow_log()

    # -- the log --------------------------------------------------------------------------------------

    @work(exclusive=True, group="log")
    async def follow_log(self) -> None:
        view = self.query_one(LogView)
        delay = RECONNECT_MIN
        while True:
            try:
                async with self.client.logs(self.job_id, self.last_line) as lines:
                    delay = RECONNECT_MIN
                    async for item in lines:
                        if isinstance(item, LogEnd):
                            self.log_ended = True
                            view.flush()
                            self._log_status()
                            return
                        if item.n > self.last_line:
                            self.last_line = item.n
                            view.push((item,))
                            self._log_status()
            except ClientError as exc:
                if exc.status == 404:
                    self.notify(f"job #{self.job_id} does not exist", severity="error")
                    return
                self.post_message(RequestFailed(exc))
            # The stream broke off before its end: resume after the last line (Last-Event-ID), like an EventSource.
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    def _log_status(self) -> None:
        view = self.query_one(LogView)
        parts = [f"log: {self.last_line} lines"]
        if self.log_ended:
            parts.append("ended")
        elif view.following:
            parts.append("following")
        else:
            parts.append("paused (f: follow)")
        if view.term:
            where = f"{view.current + 1}/" if view.current is not None else ""
            parts.append(f"/{view.term}: {where}{len(view.matches)} matches (n/N)")
        self.query_one("#log-status", Static).update(" · ".join(parts))

    def action_search(self) -> None:
        search = self.query_one("#search", Input)
        search.display = True
        search.focus()

    @on(Input.Submitted, "#search")
    def _search(self, message: Input.Submitted) -> None:
        view = self.query_one(LogView)
        found = view.search(message.value)
        if message.value and not found:
            self.notify(f"{message.value!r} is not in the log", severity="warning")
        message.input.display = False
        view.focus()
        self._log_status()

    def action_next_match(self, backward: bool = False) -> None:
        self.query_one(LogView).next_match(backward)
        self._log_status()

    def action_follow(self) -> None:
        self.query_one(LogView).follow()
        self._log_status()

    def action_back(self) -> None:
        search = self.query_one("#search", Input)
        if search.display:
            search.display = False
            self.query_one(LogView).focus()
            return
        self.dismiss()

    # -- actions --------------------------------------------------------------------------------------

    def action_cancel_job(self) -> None:
        if self.job is not None:
            self.post_message(CancelJob(self.job))

    def action_retry_job(self, from_failed_step: bool = False) -> None:
        if self.job is not None:
            self.post_message(RetryJob(self.job, from_failed_step))

    def action_priority(self) -> None:
        if self.job is not None:
            self.post_message(ChangePriority(self.job))


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question before an action that destroys something."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="question")
            with Horizontal(classes="buttons"):
                yield Button("Yes (y)", variant="error", id="yes")
                yield Button("No (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, message: Button.Pressed) -> None:
        self.dismiss(message.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


def _priority_problem(text: str, required: bool) -> str | None:
    text = text.strip()
    if not text:
        return "required" if required else None
    if not re.fullmatch(r"[0-9]{1,2}", text) or not MIN_PRIORITY <= int(text) <= MAX_PRIORITY:
        return f"a whole number {MIN_PRIORITY}..{MAX_PRIORITY} (higher runs first)"
    return None


class PriorityScreen(ModalScreen[int | None]):
    """The new priority of a queued job, checked before it is sent."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss_none", "Cancel")]

    def __init__(self, job: JobInfo) -> None:
        super().__init__()
        self.job = job

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Priority of job #{self.job.id} ({MIN_PRIORITY}..{MAX_PRIORITY}, higher runs first)")
            yield Input(str(self.job.priority), id="priority")
            yield Label("", classes="error", id="priority-error")
            with Horizontal(classes="buttons"):
                yield Button("Set", variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    @on(Input.Submitted)
    @on(Button.Pressed, "#ok")
    def _submit(self) -> None:
        value = self.query_one("#priority", Input).value
        problem = _priority_problem(value, required=True)
        self.query_one("#priority-error", Label).update(problem or "")
        if problem is None:
            self.dismiss(int(value))

    @on(Button.Pressed, "#cancel")
    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class SubmitScreen(ModalScreen[Submission | None]):
    """A form that submits a pipeline; problems, its own or the server's, show under the field they concern.
    It ends with what the server made (its jobs, or a pipeline still planning), or None when cancelled."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss_none", "Cancel")]
    FIELDS = ("repo", "ref", "sha", "priority")

    def __init__(self, client: Client) -> None:
        super().__init__()
        self.client = client

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog", id="submit-form"):
            yield Label("Submit a job", classes="title")
            for name, label, placeholder in (
                ("repo", "repository", "clone URL or path on the server"),
                ("ref", "ref", "branch, tag or refs/..."),
                ("sha", "sha", "optional: the exact commit"),
                ("priority", "priority", f"optional: {MIN_PRIORITY}..{MAX_PRIORITY}, higher runs first"),
            ):
                yield Label(label)
                yield Input(placeholder=placeholder, compact=True, id=name)
                yield Label("", classes="error", id=f"{name}-error")
            yield InputsForm(self.client)  # its fields follow the repository and ref above
            yield Label("", classes="error", id="form-error")
            with Horizontal(classes="buttons"):
                yield Button("Submit", variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    def value(self, name: str) -> str:
        return self.query_one(f"#{name}", Input).value.strip()

    def problems(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for name in ("repo", "ref"):
            if not self.value(name):
                found[name] = "required"
        sha = self.value("sha")
        if sha and not SHA.fullmatch(sha):
            found["sha"] = "7 to 40 hexadecimal digits"
        if (problem := _priority_problem(self.value("priority"), required=False)) is not None:
            found["priority"] = problem
        if (problem := self.query_one(InputsForm).problem()) is not None:
            found["inputs"] = problem
        return found

    def show_problems(self, problems: dict[str, str], general: str = "") -> None:
        for name in self.FIELDS:
            self.query_one(f"#{name}-error", Label).update(problems.get(name, ""))
        left = self.query_one(InputsForm).show_problems(general.splitlines() if general else [],
                                                         problems.get("inputs", ""))
        self.query_one("#form-error", Label).update("\n".join(left))

    @on(Input.Blurred, "#repo, #ref")
    def _look(self) -> None:
        self.query_one(InputsForm).look(self.value("repo"), self.value("ref"))

    @on(Input.Submitted)
    @on(Button.Pressed, "#ok")
    def _submit(self) -> None:
        problems = self.problems()
        self.show_problems(problems)
        if not problems:
            priority = self.value("priority")
            self._send(self.value("repo"), self.value("ref"), self.value("sha") or None,
                       int(priority) if priority else None, self.query_one(InputsForm).values())

    @work(exclusive=True, group="submit")
    async def _send(self, repo: str, ref: str, sha: str | None, priority: int | None,
                    inputs: dict[str, str]) -> None:
        try:
            submitted = await self.client.submit(repo, ref, sha=sha, priority=priority, inputs=inputs or None)
        except ClientError as exc:
            if exc.status == 400:
                self.show_problems(*self._server_problems(exc.details))
            else:
                self.show_problems({}, str(exc))
                self.post_message(RequestFailed(exc))
            return
        self.dismiss(submitted)

    def _server_problems(self, details: Sequence[str]) -> tuple[dict[str, str], str]:
        """The server's 400 details (`request: priority: expected ...`) under the fields they name."""
        fields: dict[str, str] = {}
        rest: list[str] = []
        for detail in details:
            parts = [p.strip() for p in detail.split(":", 2)]
            if len(parts) == 3 and parts[1] in self.FIELDS:
                fields[parts[1]] = parts[2]
            else:
                rest.append(detail)
        return fields, "\n".join(rest)

    @on(Button.Pressed, "#cancel")
    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    """Every key of every screen and panel, built from their bindings so it cannot fall out of date."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,q", "close", "Close")]

    def __init__(self, sections: Sequence[tuple[str, Sequence[BindingType]]]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        text = Text()
        for title, bindings in self.sections:
            text.append(f"{title}\n", "bold underline")
            for key, description in help_rows(bindings):
                text.append(f"  {key:<14}", "bold cyan")
                text.append(f"{description}\n")
            text.append("\n")
        text.append("escape / ? / q closes this help", "dim")
        with VerticalScroll(classes="dialog", id="help"):
            yield Static(text)

    def action_close(self) -> None:
        self.dismiss(None)


def help_rows(bindings: Sequence[BindingType]) -> list[tuple[str, str]]:
    """(keys, description) of each binding, keys as people type them."""
    names = {"slash": "/", "question_mark": "?", "escape": "esc", "delete": "del", "enter": "enter"}
    rows = []
    for binding in bindings:
        if isinstance(binding, Binding):
            keys, description, display = binding.key, binding.description, binding.key_display
        else:
            keys, description, display = binding[0], binding[2] if len(binding) > 2 else "", None
        shown = display or " ".join(names.get(k, k) for k in keys.split(","))
        rows.append((shown, description))
    return rows

