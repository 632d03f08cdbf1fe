"""Hostile webhook bodies, validly signed: deep nesting, huge strings, wrong types, garbage; no 5xx, nothing lost."""

from __future__ import annotations

import copy
import http.client
import json
import logging
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.bot.api_helpers import live_server
from tests.bot.forge_payloads import gitea_push, gitlab_push
from tests.bot.webhook_helpers import (
    ENV, GITHUB_SECRET, GITLAB_SECRET, fixture_json, gitea_headers, github_headers, gitlab_headers, quick_settings,
)
from tests.reliability.harness import Ledger, plural
from tests.reliability.report import Row

pytestmark = pytest.mark.podman  # the app checks the Podman user's folders; no container starts

Poster = Callable[[str, bytes, dict[str, str]], tuple[int, Any]]
MB = 1 << 20

WRONG_VALUES: list[object] = [None, 0, -1, 2**70, 1.5, True, "", "\x00", "\ud800", [], {}, ["x"], {"a": {"b": 1}},
                              "x" * 100_000]
PUSH_PATHS = ["ref", "after", "before", "deleted", "repository", "repository.clone_url", "repository.full_name",
              "pusher", "pusher.name", "sender", "sender.login", "head_commit", "head_commit.message", "installation",
              "installation.id", "commits"]
PULL_PATHS = ["action", "number", "pull_request", "pull_request.number", "pull_request.head", "pull_request.head.sha",
              "pull_request.head.repo", "pull_request.head.repo.full_name", "pull_request.base",
              "pull_request.base.ref", "pull_request.base.repo.full_name", "pull_request.draft",
              "pull_request.title", "repository.clone_url"]


def replaced(payload: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    out = copy.deepcopy(payload)
    *parents, last = path.split(".")
    target = out
    for key in parents:
        target = target.setdefault(key, {}) if isinstance(target.get(key), dict) else target.setdefault(key, {})
        if not isinstance(target, dict):
            return out
    target[last] = value
    return out


def dumps(value: object) -> bytes:
    return json.dumps(value).encode("utf-8", "surrogatepass")


def inside(payload: dict[str, Any], key: str, raw: bytes) -> bytes:
    """The payload with `raw` (JSON text too deep for json.dumps) as the value of one more top-level key."""
    return dumps(payload)[:-1] + b', "' + key.encode() + b'": ' + raw + b"}"


def hostile_github() -> Iterator[tuple[str, str, bytes]]:
    """(what, event, body) for the GitHub endpoint: each one is signed with the right secret."""
    push = fixture_json("push.with-new-branch.json")
    pull = fixture_json("pull_request.opened.json")
    deep_array = b"[" * 100_000 + b"]" * 100_000
    deep_object = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
    yield "deep array", "push", deep_array
    yield "deep object", "push", deep_object
    yield "deep value inside a push", "push", inside(push, "extra", deep_array)
    yield "deep value inside a pull request", "pull_request", inside(pull, "extra", deep_object)
    yield "990 levels, within the parser's limit", "push", inside(push, "extra", b"[" * 990 + b"]" * 990)
    yield "a 20 MB commit message", "push", dumps(replaced(push, "head_commit.message", "m" * (20 * MB)))
    yield "a 5 MB ref", "push", dumps(replaced(push, "ref", "refs/heads/" + "a" * (5 * MB)))
    yield "a 5 MB clone URL", "push", dumps(replaced(push, "repository.clone_url", "https://x/" + "a" * (5 * MB)))
    yield "200,000 keys", "push", dumps({**push, **{f"k{i}": i for i in range(200_000)}})
    yield "a 100,000-digit number", "push", inside(push, "n", b"1" * 100_000)
    yield "a 100,000-digit number as the sha", "push", dumps(push)[:-1] + b', "after": ' + b"9" * 100_000 + b"}"
    yield "1e999999", "push", inside(push, "n", b"1e999999")
    yield "NaN and Infinity", "push", inside(push, "n", b"[NaN, Infinity, -Infinity]")
    yield "a lone surrogate in the ref", "push", dumps(replaced(push, "ref", "refs/heads/\ud800"))
    yield "escaped NUL in the ref", "push", dumps(replaced(push, "ref", "refs/heads/a\x00b"))
    yield "duplicate keys", "push", dumps(push)[:-1] + b', "ref": 5, "ref": null}'
    yield "a BOM before the JSON", "push", b"\xef\xbb\xbf" + dumps(push)
    yield "invalid UTF-8 in a string", "push", dumps(push).replace(b"Codertocat", b"Coder\xfftocat", 1)
    for value in (b"", b"null", b"[]", b'"a string"', b"0", b"true", b"{", b"}", b"\x00" * 64):
        yield f"the body {value[:16]!r}", "push", value
    rng = random.Random(8)
    for n in (1, 100, 10_000):
        yield f"{n} random bytes", "push", rng.randbytes(n)
    for path in PUSH_PATHS:
        for value in WRONG_VALUES:
            yield f"push {path} = {str(value)[:20]!r}", "push", dumps(replaced(push, path, value))
    for path in PULL_PATHS:
        for value in WRONG_VALUES:
            yield f"pull_request {path} = {str(value)[:20]!r}", "pull_request", dumps(replaced(pull, path, value))
    for event in ("", "x" * 8000, "pu\tsh", "p\xfcsh", "pull_request ", "../../etc/passwd", "ping"):
        yield f"event header {event[:20]!r}", event, dumps(push)


def hostile_others() -> Iterator[tuple[str, str, str, bytes]]:
    """(what, forge, event, body) for the Gitea and GitLab endpoints."""
    for forge, event, payload in (("gitea", "push", gitea_push()), ("gitlab", "Push Hook", gitlab_push())):
        yield "deep array", forge, event, b"[" * 100_000 + b"]" * 100_000
        yield "deep value inside", forge, event, inside(payload, "extra", b'{"a":' * 50_000 + b"1" + b"}" * 50_000)
        yield "a 20 MB string", forge, event, dumps({**payload, "extra": "s" * (20 * MB)})
        yield "a 100,000-digit number", forge, event, inside(payload, "n", b"1" * 100_000)
        yield "random bytes", forge, event, random.Random(forge).randbytes(5000)
        for path in ("ref", "after", "repository", "project", "commits", "checkout_sha", "object_kind"):
            for value in WRONG_VALUES:
                yield f"{path} = {str(value)[:20]!r}", forge, event, dumps(replaced(payload, path, value))


class Client:
    """Raw HTTP to the live server, one keep-alive connection: the bodies go exactly as built."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.statuses: dict[int, int] = {}

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        try:
            self.conn.request("POST", path, body=body, headers=headers)
            response = self.conn.getresponse()
            raw = response.read()
        except (http.client.HTTPException, OSError):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            raise
        if response.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw.decode(errors="replace")


def check_answer(what: str, status: int, body: Any) -> None:
    assert status < 500, f"{what}: {status} {body}"
    assert isinstance(body, dict), f"{what}: not a JSON object: {body!r:.200}"
    if status >= 400:
        assert set(body) == {"error", "detail"} and "Traceback" not in json.dumps(body), f"{what}: {body}"
    assert GITHUB_SECRET not in json.dumps(body) and GITLAB_SECRET not in json.dumps(body)


def good_push(client: Client, ledger: Ledger, n: int) -> None:
    """A valid delivery between hostile ones: it must be accepted and kept."""
    payload = fixture_json("push.with-new-branch.json")
    payload["ref"] = f"refs/heads/good-{n}"
    body = dumps(payload)
    headers = github_headers("push", body, delivery=f"good-{n}")
    status, answer = client.post("/webhooks/github", body, headers)
    assert status == 202 and len(answer["pipelines"]) == 1 and answer["jobs"] == [], answer
    ledger.delivered(f"good-{n}", answer["pipelines"])


JSON_LEAVES = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
               | st.sampled_from(["refs/heads/main", "a" * 40, "0" * 40, "opened", "synchronize", ""]))
JSON_TREES = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=25)


def test_hostile_webhook_bodies(shared_dir: Path, caplog: pytest.LogCaptureFixture,
                                report: Callable[[str], Row]) -> None:
    row = report("Hostile webhooks: validly signed bodies with deep nesting, 20 MB strings, wrong types in every "
                 "field, garbage bytes, odd headers (GitHub, Gitea, GitLab), and 300 generated payloads")
    ledger = Ledger()
    settings_ = quick_settings(shared_dir)
    caplog.set_level(logging.ERROR)
    with live_server(settings_, ENV) as server:
        client = Client(server.port)
        count = 0
        for count, (what, event, body) in enumerate(hostile_github(), 1):
            headers = github_headers(event or "push", body)
            headers["X-GitHub-Event"] = event
            check_answer(what, *client.post("/webhooks/github", body, headers))
            if count % 20 == 0:
                good_push(client, ledger, count)
        # Over aiohttp's 8190-byte header limit, or a control character: its HTTP parser answers 400 (in plain
        # text) before the app sees the request.
        body = dumps(fixture_json("push.with-new-branch.json"))
        for event in ("x" * 9000, "push\x7f", "push\x01"):
            status, _ = client.post("/webhooks/github", body, {**github_headers("push", body), "X-GitHub-Event": event})
            assert status == 400
        # Signature, token and delivery headers that are not ASCII (compare_digest refuses such str).
        for forge, name in (("github", "X-Hub-Signature-256"), ("github", "X-GitHub-Delivery"),
                            ("gitea", "X-Gitea-Signature"), ("gitlab", "X-Gitlab-Token")):
            for value in ("sha256=\xe9", "\xe9" * 64, "\xff\xfe"):
                count += 1
                headers = {"github": github_headers("push", body), "gitea": gitea_headers("push", body),
                           "gitlab": gitlab_headers("Push Hook")}[forge]
                status, answer = client.post(f"/webhooks/{forge}", body, {**headers, name: value})
                check_answer(f"{forge} {name}: {value!r}", status, answer)
                assert status in (400, 401), (forge, name, status, answer)
        for what, forge, event, body in hostile_others():
            count += 1
            headers = gitea_headers(event, body) if forge == "gitea" else gitlab_headers(event)
            check_answer(f"{forge}: {what}", *client.post(f"/webhooks/{forge}", body, headers))
            if count % 20 == 0:
                good_push(client, ledger, count)

        generated = {"n": 0}
        base = {"push": fixture_json("push.with-new-branch.json"),
                "pull_request": fixture_json("pull_request.opened.json")}

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(event=st.sampled_from(["push", "pull_request"]), path=st.sampled_from(PUSH_PATHS + PULL_PATHS),
               value=JSON_TREES)
        def generated_payloads(event: str, path: str, value: object) -> None:
            generated["n"] += 1
            body = dumps(replaced(base[event], path, value))
            check_answer(f"{event} {path} = {value!r:.100}", *client.post("/webhooks/github", body,
                                                                           github_headers(event, body)))

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(value=JSON_TREES)
        def generated_documents(value: object) -> None:
            generated["n"] += 1
            body = dumps(value)
            check_answer(f"document {value!r:.100}", *client.post("/webhooks/github", body,
                                                                   github_headers("push", body)))

        generated_payloads()
        generated_documents()
        good_push(client, ledger, count + 1)
        db = server.runtime.layout.db
        statuses = dict(sorted(client.statuses.items()))
    unhandled = [r.getMessage() for r in caplog.records if "unhandled error" in r.getMessage()]
    assert unhandled == [], unhandled
    row.happened = (f"{plural(count + generated['n'], 'hostile delivery')}: answers by status {statuses}, every "
                    f"error a JSON error naming the problem, no 5xx, no traceback, no secret echoed; the "
                    f"{plural(len(ledger.deliveries), 'valid delivery')} sent between them were all accepted")
    assert row.count(ledger, db).total == 0
