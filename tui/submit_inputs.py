"""The submit form's inputs: a field per input the repository's ref declares (`GET /inputs`: its last planned
pipeline's file), or one `KEY=VALUE ...` line when that file is not known."""

from __future__ import annotations

from collections.abc import Sequence

from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input, Label

from client.api import Client
from client.errors import ClientError
from client.inputs import Declared, declared_inputs, parse_pairs

PLAIN_HINT = "optional: KEY=VALUE KEY2=\"two words\" (jobs see INPUT_<KEY>)"


class InputsForm(Vertical):
    """Its fields follow the repository and ref typed above (`look`); `values` are the inputs to submit."""

    DEFAULT_CSS = "InputsForm { height: auto; }"

    def __init__(self, client: Client) -> None:
        super().__init__(id="inputs-form")
        self.client = client
        self.declared: Declared | None = None  # known and non-empty: a field per input
        self._looked: tuple[str, str] = ("", "")

    def compose(self) -> ComposeResult:
        yield from self._plain("inputs")

    def _plain(self, label: str) -> list[Label | Input]:
        return [Label(label), Input(placeholder=PLAIN_HINT, compact=True, id="inputs"),
                Label("", classes="error", id="inputs-error")]

    def look(self, repo: str, ref: str) -> None:
        """Ask the server what `repo` at `ref` declares (once per pair), and show its fields."""
        if not repo or not ref or (repo, ref) == self._looked:
            return
        self._looked = (repo, ref)
        self._fetch(repo, ref)

    @work(exclusive=True, group="inputs")
    async def _fetch(self, repo: str, ref: str) -> None:
        try:
            declared = await declared_inputs(self.client, repo, ref)
        except ClientError:
            return  # a server without GET /inputs, or a fault the submit itself will report: plain fields stay
        await self.show(declared)

    async def show(self, declared: Declared) -> None:
        self.declared = declared if declared.known and declared.inputs else None
        await self.remove_children()
        if self.declared is None:
            note = "its pipeline declares none" if declared.known else "its pipeline file is not known yet"
            await self.mount_all(self._plain(f"inputs ({note})"))
            return
        widgets: list[Label | Input] = []
        for item in self.declared.inputs:
            label = f"input {item.key}" + (" (required)" if item.required else "")
            label += f": {item.description}" if item.description else ""
            hint = f"one of {', '.join(item.choices)}" if item.choices else ("required" if item.required
                                                                               else "optional")
            widgets += [Label(label), Input(value=item.default or "", placeholder=hint, compact=True,
                                            id=f"input-{item.key}"),
                        Label("", classes="error", id=f"input-{item.key}-error")]
        await self.mount_all(widgets)

    def values(self) -> dict[str, str]:
        """The inputs as the API takes them; ValueError for a plain line that does not parse."""
        if self.declared is None:
            return parse_pairs(self.query_one("#inputs", Input).value)
        found = {}
        for item in self.declared.inputs:
            value = self.query_one(f"#input-{item.key}", Input).value
            if value != "":
                found[item.key] = value
        return found

    def problem(self) -> str | None:
        """Why the plain line does not parse, shown under it; None when it does (or there are fields)."""
        try:
            self.values()
        except ValueError as exc:
            return str(exc)
        return None

    def show_problems(self, details: Sequence[str], plain: str = "") -> list[str]:
        """Put the server's `inputs: inputs.KEY: ...` details under their fields; the details left over."""
        rest, by_key = [], {}
        for detail in details:
            parts = [p.strip() for p in detail.split(":", 2)]
            if len(parts) == 3 and parts[1].startswith("inputs.") and self.declared is not None:
                by_key[parts[1].removeprefix("inputs.")] = parts[2]
            elif len(parts) == 3 and parts[1].startswith("inputs"):
                plain = plain or f"{parts[1].removeprefix('inputs.')}: {parts[2]}"
            else:
                rest.append(detail)
        for label in self.query(".error").results(Label):
            key = (label.id or "").removeprefix("input-").removesuffix("-error")
            label.update(plain if label.id == "inputs-error" else by_key.get(key, ""))
        unplaced = [k for k in by_key if self.declared is None or k not in {i.key for i in self.declared.inputs}]
        return rest + [f"inputs.{k}: {by_key[k]}" for k in unplaced]
