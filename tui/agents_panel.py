"""The agents panel: the server's remote runners (GET /agents), their labels, state and running jobs."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from client.agents import agent_row, fetch_agents
from client.errors import ClientError
from client.models import ServerEvent
from tui.panels import Panel

AGENT_COLUMNS = ("agent", "state", "labels", "running", "version", "address", "last claim")


class AgentsPanel(Panel):
    """Each agent's labels and running jobs; reloads on job state changes (claims, ends) and every 10 s."""

    RELOAD_DELAY = 1.0

    def compose(self) -> ComposeResult:
        yield Static("", id="agents-summary")
        yield DataTable(id="agents-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        super().on_mount()
        self.table.add_columns(*AGENT_COLUMNS)
        self.set_interval(10.0, self.schedule_reload)  # "last claim" and online state age without events

    @property
    def table(self) -> DataTable[str]:
        return self.query_one("#agents-table", DataTable)

    def concerns(self, event: ServerEvent) -> bool:
        return event.kind == "state"

    def load(self) -> None:
        self._fetch()

    @work(exclusive=True, group="agents")
    async def _fetch(self) -> None:
        try:
            doc = await fetch_agents(self.client)
        except ClientError as exc:
            self.stale = True
            self.failed(exc)
            return
        table = self.table
        table.clear()
        for agent in doc["agents"]:
            table.add_row(*agent_row(agent), key=str(agent["id"]))
        embedded = doc.get("embedded") or {}
        online = sum(1 for agent in doc["agents"] if agent.get("online"))
        labels = ",".join(embedded.get("labels") or []) or "none"
        self.query_one("#agents-summary", Static).update(
            f"{len(doc['agents'])} agents, {online} online; embedded runner "
            + (f"on (labels: {labels})" if embedded.get("enabled") else "off"))
