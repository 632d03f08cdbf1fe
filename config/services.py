"""Service containers of a pipeline ([services.NAME], [jobs.NAME.services.NAME]): the model and its checks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from config.matrix import quoted
from config.schema import (
    DURATION,
    INVALID,
    NONEMPTY,
    STRING_TABLE,
    Issues,
    Kind,
    decode,
    describe,
    encode,
    key_path,
    option,
    string_list,
)

# A service is reached by its name (`db:5432`): names are host names, one DNS label each.
SERVICE_NAME: Final = re.compile(r"[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
SERVICE_NAME_RULE: Final = 'letters, digits and "-", starting with a letter, not ending with "-", at most 63 long'
RESERVED_NAMES: Final = frozenset({"localhost"})  # the hosts file of the pod already says what it is
MAX_SERVICES: Final = 16  # per job; each is a container of its own
DEFAULT_READY_TIMEOUT: Final = 60.0


@dataclass(frozen=True, kw_only=True)
class Service:
    """One service container beside a job: a database or broker, reachable on 127.0.0.1 and by its name."""

    image: str = option(NONEMPTY, "image of the service container")
    env: dict[str, str] = option(STRING_TABLE, "variables of the service container (not of the job's steps)",
                                 factory=dict)
    command: tuple[str, ...] | None = option(string_list(label="array of strings", nonempty=True),
                                             "arguments replacing the image's CMD", None,
                                             shown="the image's CMD")
    ready: str | None = option(NONEMPTY, "shell command run inside the service until it exits 0; the first step "
                                         "waits for it", None, shown="wait for the exposed ports")
    ready_timeout: float = option(DURATION, "how long the service may take to get ready before the job fails",
                                  DEFAULT_READY_TIMEOUT)


def _convert_services(value: object, path: str, issues: Issues) -> object:
    if not isinstance(value, dict):
        issues.add(path, f"expected [{path}.NAME] tables, got {describe(value)}")
        return INVALID
    before = issues.count
    services: dict[str, Service] = {}
    seen: dict[str, str] = {}  # lower-cased name -> as written: host names ignore case
    for key, item in value.items():
        where = key_path(path, str(key))
        if not isinstance(key, str) or not SERVICE_NAME.fullmatch(key):
            issues.add(where, f"expected service names of {SERVICE_NAME_RULE}, got {describe(key)}")
            continue
        if key.lower() in RESERVED_NAMES:
            issues.add(where, f"{quoted(key)} is reserved: every container of the pod is localhost already")
            continue
        if key.lower() in seen:
            issues.add(where, f"{quoted(seen[key.lower()])} and {quoted(key)} are the same host name")
            continue
        seen[key.lower()] = key
        service = decode(Service, item, where, issues)
        if service is not INVALID:
            services[key] = service
    if len(value) > MAX_SERVICES:
        issues.add(path, f"at most {MAX_SERVICES} services per job, got {len(value)}")
    return services if issues.count == before else INVALID


SERVICES: Final = Kind("table of tables", _convert_services, lambda services: {k: encode(v) for k, v in
                                                                                 services.items()},
                       Service, ".<NAME>.")


def merged_services(top: dict[str, Service], job: dict[str, Service]) -> dict[str, Service]:
    """A job's services: the top-level ones, with each of the job's own replacing the one of the same (host) name."""
    own = {name.lower() for name in job}
    return {**{name: s for name, s in top.items() if name.lower() not in own}, **job}
