"""The one exception hierarchy of forgeci; each layer subclasses ForgeciError and edges translate it."""

from __future__ import annotations

from dataclasses import dataclass


class ForgeciError(Exception):
    """Base of every error forgeci raises on purpose."""


@dataclass(frozen=True)
class ConfigIssue:
    """One validation problem: which file, which key path, what was expected."""

    source: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.path}" if self.path else self.source
        return f"{where}: {self.message}" if where else self.message  # a bare message: no empty `: ` before it


class ConfigError(ForgeciError):
    """A settings or pipeline file (or JSON job spec) is invalid; carries every issue found."""

    def __init__(self, issues: list[ConfigIssue] | ConfigIssue | str, source: str = "") -> None:
        if isinstance(issues, str):
            issues = [ConfigIssue(source, "", issues)]
        elif isinstance(issues, ConfigIssue):
            issues = [issues]
        self.issues: list[ConfigIssue] = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))
