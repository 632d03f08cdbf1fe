"""A time-bounded mutation fuzz of the settings and pipeline parsers, on top of tests/config/test_fuzz.py.

tests/config/test_fuzz.py generates documents from scratch (hypothesis). This one starts from complete, valid
documents (every section of forgeci.toml, a full pipeline) and mutates them, which reaches the checks deep inside
the schema; it runs for a fixed time, under a watchdog that turns a hang into a failure naming the input.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import pytest

from config.errors import ConfigError
from config.pipeline import parse_pipeline
from config.settings import parse_settings
from tests.reliability.harness import plural
from tests.reliability.report import Row

SECONDS = float(os.environ.get("FORGECI_FUZZ_SECONDS", "10"))
HANG = 5.0  # seconds one parse may take before it counts as a hang

SETTINGS = '''data_dir = "/var/lib/forgeci"
[server]
host = "127.0.0.1"
port = 8080
public_url = "http://127.0.0.1:8080"
api_token_env = "FORGECI_API_TOKEN"
protect_reads = false
status_context = "forgeci/ci"
run_drafts = true
[queue]
max_concurrent = 2
default_priority = 5
max_retries = 3
lease_seconds = 60
cancel_superseded = true
[runner]
image = "localhost/forgeci-job:latest"
podman_user = "forgeci"
podman_url = ""
network = "slirp4netns"
memory = "4g"
pids_limit = 4096
ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
step_timeout = "5m"
job_timeout = "1h"
ca_bundle = "/etc/ssl/certs/ca-certificates.crt"
[storage]
url = "s3://forgeci?endpoint=http://127.0.0.1:9000&secure=false"
access_key_env = "FORGECI_S3_ACCESS_KEY"
secret_key_env = "FORGECI_S3_SECRET_KEY"
[retention]
snapshot_days = 7
cache_days = 30
job_days = 7
[secrets]
NPM_TOKEN = { env = "FORGECI_SECRET_NPM_TOKEN", repos = ["acme/*"] }
[git]
token_env = "FORGECI_GIT_TOKEN"
[github]
api_url = "https://api.github.com"
webhook_secret_env = "FORGECI_GITHUB_WEBHOOK_SECRET"
token_env = "FORGECI_GITHUB_TOKEN"
app_id = 0
private_key_path = ""
[gitea]
api_url = ""
webhook_secret_env = "FORGECI_GITEA_WEBHOOK_SECRET"
token_env = "FORGECI_GITEA_TOKEN"
[gitlab]
api_url = ""
webhook_secret_env = "FORGECI_GITLAB_WEBHOOK_SECRET"
token_env = "FORGECI_GITLAB_TOKEN"
'''

PIPELINE = '''image = "localhost/forgeci-job:latest"
timeout = "30m"
branches = ["main", "release/*"]
snapshot = "always"
secrets = ["NPM_TOKEN"]
[env]
CI = "true"
[cache]
paths = ["node_modules"]
key_files = ["package-lock.json"]
save = "success"
[[steps]]
name = "install"
run = "npm ci"
[[steps]]
name = "test"
run = "npm test"
timeout = "10m"
continue_on_error = false
env = { NODE_ENV = "test" }
'''

TOKENS = ["[", "]", "{", "}", "=", '"', "'", '"""', "'''", "\n", ",", ".", "#", "[[steps]]", "[steps]", "[env]",
          "[cache]", "[server]", "[[server]]", "\\u0000", "\\ud800", "\\", "1e400", "inf", "-inf", "nan", "-0",
          "0x7fffffffffffffff", "99999999999999999999", "1979-05-27T07:32:00Z", "07:32:00", "true", "false", "\t",
          "\r", "\x00", "\x7f", "\ufeff", "é", "a.b.c", "steps", "run", "name", "timeout", "paths", "port", "-1",
          "0", "5m", "1h", "0s", "999999999d", "-5m", "1.5", "[]", "{}", "[[]]", '""', "x" * 200, "../", "/abs",
          "*", "**", "always", "never", "success"]


def mutate(text: str, rng: random.Random) -> str | bytes:
    """One to five random edits of `text`: cut, repeat, insert, swap; now and then raw bytes instead of text."""
    for _ in range(rng.randint(1, 5)):
        lines = text.split("\n")
        kind = rng.randrange(6)
        if kind == 0 and len(text) > 2:
            start = rng.randrange(len(text))
            text = text[:start] + text[start + rng.randint(1, 20):]
        elif kind == 1:
            i = rng.randrange(len(lines))
            lines.insert(i, lines[i])
            text = "\n".join(lines)
        elif kind == 2:
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        elif kind == 3:
            i = rng.randrange(len(lines))
            key, sep, _ = lines[i].partition("=")
            if sep:
                lines[i] = f"{key}= {rng.choice(TOKENS)}"
            text = "\n".join(lines)
        else:
            at = rng.randrange(len(text) + 1)
            text = text[:at] + rng.choice(TOKENS) + text[at:]
    if rng.random() < 0.05:
        data = bytearray(text.encode("utf-8", "surrogatepass"))
        for _ in range(rng.randint(1, 4)):
            data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
        return bytes(data)
    return text


class Hang(Exception):
    pass


@contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    def fire(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"no answer within {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.slow  # slow only in that it takes its whole time budget
def test_mutated_documents_only_ever_raise_config_error(report: Callable[[str], Row]) -> None:
    row = report(f"Hostile config: mutation fuzz of the settings and pipeline parsers for {SECONDS:g} s, starting "
                 f"from complete valid documents")
    parsers: list[tuple[str, str, Callable[[str | bytes, str], object]]] = [
        ("settings", SETTINGS, parse_settings), ("pipeline", PIPELINE, parse_pipeline)]
    for _, seed, parse in parsers:  # the seeds themselves are valid: mutations start inside the schema
        parse(seed, "seed")
    rng = random.Random(int(os.environ.get("FORGECI_FUZZ_SEED", "20251129")))
    inputs = refused = 0
    slowest = 0.0
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        name, seed, parse = rng.choice(parsers)
        data = mutate(seed, rng)
        inputs += 1
        started = time.perf_counter()
        try:
            with watchdog(HANG):
                parse(data, "fuzz")
        except ConfigError as exc:
            refused += 1
            assert exc.issues and all(isinstance(i.message, str) and i.message for i in exc.issues), data
        except Hang as exc:
            raise AssertionError(f"the {name} parser hung on {data!r:.2000}") from exc
        except Exception as exc:
            raise AssertionError(f"the {name} parser raised {type(exc).__name__}: {exc} on {data!r:.2000}") from exc
        slowest = max(slowest, time.perf_counter() - started)
    assert inputs > 1000, "the fuzz ran too few inputs to mean anything"
    row.happened = (f"{plural(inputs, 'mutated document')}: {refused:,} refused with a ConfigError naming the key, "
                    f"{inputs - refused:,} valid; no other exception, no hang (slowest {slowest * 1000:.0f} ms)")
    row.nothing_stored("parsers only")
