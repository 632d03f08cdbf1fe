"""What triggers a pipeline: event names, and the `events`, `paths` and `paths_ignore` filters of a pipeline or job."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Final

from config.schema import as_text, describe, string_list

# The events a pipeline runs for: the forges' push, tag and pull_request; `schedule` for [[schedules]]; `manual`
# for the API, the CLI, the TUI, the dashboard and `forgeci run`.
EVENTS: Final = ("push", "pull_request", "tag", "schedule", "manual")
# Names older forgeci versions stored: a submission was `api`, `forgeci run` was `local`. Both read as `manual`.
ALIASES: Final = {"api": "manual", "local": "manual"}
# Events whose changed files are known (a diff in the mirror); path filters do not apply to the others.
DIFFED: Final = ("push", "pull_request")


def event_name(event: str) -> str:
    """The event as the filters and `FORGECI_EVENT` name it (`api` and `local`, as older rows say: `manual`)."""
    return ALIASES.get(event, event)


def _event(value: object) -> str:
    found = as_text(value, "an event name")
    if found not in EVENTS:
        raise ValueError(f"expected one of {', '.join(EVENTS)}, got {describe(found)}")
    return found


def _glob(value: object) -> str:
    found = as_text(value, "a path glob")
    if not found.strip("/"):
        raise ValueError(f"expected a path glob like src/** or *.md, got {describe(found)}")
    if ".." in found.split("/"):
        raise ValueError(f"expected a path inside the repository (without '..'), got {describe(found)}")
    return found


EVENT_LIST: Final = string_list(_event, "array of events")
GLOBS: Final = string_list(_glob, "array of globs")
EVENTS_DOC: Final = "events this runs for: " + ", ".join(EVENTS) + "; others end `skipped`"
PATHS_DOC: Final = ("run only when a changed file matches one of these globs (pushes and pull requests; "
                    "`**` crosses folders, a glob without `/` matches a file name in any folder)")
PATHS_IGNORE_DOC: Final = "skip when every changed file matches one of these globs (pushes and pull requests)"
JOB_FILTER_DOC: Final = "; this job's own, checked after the top-level one (which rules out the whole pipeline)"


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    """A glob as a regular expression over a repository path: `**` any folders, `*` and `?` within one name, `[...]`
    a class; a glob without `/` matches the name in any folder (like .gitignore), a trailing `/` everything below."""
    glob = pattern.removeprefix("/") if "/" in pattern.rstrip("/") else "**/" + pattern
    if glob.endswith("/"):
        glob += "**"
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (end := glob.find("]", i + 2)) != -1:
            body = glob[i + 1:end]
            negate = body.startswith("!")
            members = "".join("\\" + ch if ch in "\\^[]" else ch for ch in (body[1:] if negate else body))
            out.append("[" + ("^" if negate else "") + members + "]")
            i = end + 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def path_matches(pattern: str, path: str) -> bool:
    """Whether repository path `path` (`src/app/main.py`) matches glob `pattern`."""
    return _compiled(pattern).fullmatch(path) is not None


def _shown(patterns: Sequence[str]) -> str:
    return ", ".join(patterns)


def ruled_out(events: Sequence[str] | None, paths: Sequence[str] | None, paths_ignore: Sequence[str] | None,
              event: str, changed: Sequence[str] | None, what: str = "the pipeline") -> str | None:
    """Why a pipeline or job does not run for `event` and the `changed` files, or None when it runs.

    None filters and empty ones let everything through; `changed` None (a schedule, a manual run, a tag, or a
    change that could not be found) lets the path filters through too.
    """
    name = event_name(event)
    if events and name not in events:
        return f"skipped: {what} runs on {_shown(events)} events, not {name}"
    if changed is None or name not in DIFFED:
        return None
    if paths and not any(path_matches(p, f) for f in changed for p in paths):
        return f"skipped: no change under {_shown(paths)}"
    if paths_ignore and changed and all(any(path_matches(p, f) for p in paths_ignore) for f in changed):
        return f"skipped: every change is under paths_ignore ({_shown(paths_ignore)})"
    return None
