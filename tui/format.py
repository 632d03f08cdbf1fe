"""How the console shows values in little room: short repositories and refs, coloured states, durations, sizes."""

from __future__ import annotations

from rich.text import Text

from config.durations import format_duration

STATE_STYLES: dict[str, str] = {
    "planning": "yellow",
    "queued": "yellow",
    "running": "bold cyan",
    "success": "green",
    "failure": "bold red",
    "timeout": "magenta",
    "cancelled": "bright_black",
    "skipped": "bright_black",
    "error": "bold red",
    "cancelling": "yellow",
}
NONE = "—"


def short_repo(repo: str) -> str:
    """`https://github.com/acme/app.git` -> `acme/app`; a local path -> its last two parts."""
    text = repo.rstrip("/").removesuffix(".git")
    if "://" in text:
        text = text.split("://", 1)[1].split("/", 1)[-1]
    elif ":" in text and not text.startswith("/"):  # scp-like git@host:owner/name
        text = text.split(":", 1)[1]
    parts = [p for p in text.split("/") if p]
    return "/".join(parts[-2:]) if parts else repo


def short_ref(ref: str) -> str:
    for prefix in ("refs/heads/", "refs/tags/"):
        if ref.startswith(prefix):
            return ref[len(prefix):]
    if ref.startswith("refs/pull/") or ref.startswith("refs/merge-requests/"):
        return "!" + ref.split("/")[2]
    return ref


def short_sha(sha: str | None) -> str:
    return sha[:7] if sha else NONE


def state_label(state: str, cancel_requested: bool = False) -> str:
    return "cancelling" if cancel_requested and state == "running" else state


def state_text(state: str, cancel_requested: bool = False) -> Text:
    label = state_label(state, cancel_requested)
    return Text(label, style=STATE_STYLES.get(label, ""))


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return NONE
    return format_duration(seconds).replace(" ", "")


def elapsed(started_at: float | None, finished_at: float | None, now: float) -> float | None:
    """Seconds a job or step ran, or has been running until now."""
    if started_at is None:
        return None
    return max(0.0, (finished_at if finished_at is not None else now) - started_at)


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def percent(rate: float | None) -> str:
    return NONE if rate is None else f"{rate * 100:.0f}%"


def ago(ts: float | None, now: float) -> str:
    return NONE if ts is None else duration(now - ts) + " ago"
