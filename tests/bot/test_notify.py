"""Notifications of finished pipelines, end to end on the fake engine: pushed pipelines fail, then are fixed, and
exactly one `failure` and one `fixed` message reach stand-ins for Slack and Discord (their documented shapes), a
webhook receiver that verifies the signature, and real SMTP servers (plain and STARTTLS); secrets stay masked."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bot.keys import RUNTIME
from config.settings import Settings, parse_settings
from runner.queue import Queue
from tests.bot.notify_helpers import (
    HOOK_SECRET, SMTP_PASSWORD, SMTP_USER, Mail, Receiver, smtp_server, text_parts,
)
from tests.bot.webhook_helpers import ENV, PUBLIC_URL, open_client, push_repo
from tests.fake_engine import FakeEngine, Script

Client = TestClient[web.Request, web.Application]
MakeRepo = Callable[..., tuple[Path, str]]
SECRET = "sekrit-Deploy-Value-73af19"
PIPELINE = '''
secrets = ["DEPLOY"]
[[steps]]
name = "build"
run = "make build"
[[steps]]
name = "test"
run = "make test"
'''
SLACK_BLOCKS = {"header", "section", "context", "actions", "divider"}


def notify_toml(receiver: Receiver, smtp_plain: int, smtp_tls: int, cafile: Path | None, **extra: Any) -> str:
    common = 'on = ["failure", "fixed"]\nbackoff = 0.2\nretries = 5\n'
    more = "".join(f"{key} = {json.dumps(value)}\n" for key, value in extra.items())
    return f'''
[secrets]
DEPLOY = {{ env = "FORGECI_SECRET_DEPLOY" }}

[[notify]]
kind = "slack"
url_env = "FORGECI_SLACK_URL"
branches = ["main"]
{common}{more}
[[notify]]
kind = "discord"
url_env = "FORGECI_DISCORD_URL"
{common}{more}
[[notify]]
kind = "webhook"
name = "audit-hook"
url_env = "FORGECI_HOOK_URL"
secret_env = "FORGECI_HOOK_SECRET"
{common}{more}
[[notify]]
kind = "email"
name = "mail-plain"
from = "forgeci@example.test"
to = ["ops@example.test", "dev@example.test"]
smtp = "smtp://127.0.0.1:{smtp_plain}"
tls = "none"
{common}{more}
[[notify]]
kind = "email"
name = "mail-starttls"
from = "forgeci@example.test"
to = ["ops@example.test"]
smtp = "smtp://127.0.0.1:{smtp_tls}"
tls = "starttls"
user_env = "FORGECI_SMTP_USER"
password_env = "FORGECI_SMTP_PASSWORD"
ca_file = "{cafile}"
{common}{more}
'''


def environ(receiver: Receiver) -> dict[str, str]:
    return {**ENV, "FORGECI_SECRET_DEPLOY": SECRET, "FORGECI_SLACK_URL": f"{receiver.url}/slack",
            "FORGECI_DISCORD_URL": f"{receiver.url}/discord", "FORGECI_HOOK_URL": f"{receiver.url}/hook",
            "FORGECI_HOOK_SECRET": HOOK_SECRET, "FORGECI_SMTP_USER": SMTP_USER,
            "FORGECI_SMTP_PASSWORD": SMTP_PASSWORD}


def with_notify(settings: Settings, toml: str) -> Settings:
    parsed = parse_settings(toml, "forgeci.toml")
    return dataclasses.replace(settings, notify=parsed.notify, secrets=parsed.secrets,
                               server=dataclasses.replace(settings.server, public_url=PUBLIC_URL))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()




async def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(condition)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        await asyncio.sleep(0.05)


def settled(queue: Queue, pipeline_id: int) -> bool:
    """The pipeline ended and every message of it was delivered or dropped."""
    if not queue.pipeline(pipeline_id).state.is_terminal:
        return False
    rows = queue.notifications_of(pipeline_id)
    return bool(rows) and all(state in ("delivered", "dropped", "fanned") for _, state in rows)


async def run_pipeline(client: Client, repo: Path, sha: str, timeout: float = 60) -> int:
    pipeline_id = await push_repo(client, repo, sha)
    await wait_until(lambda: settled(client.app[RUNTIME].queue, pipeline_id), timeout, f"pipeline {pipeline_id}")
    return pipeline_id


def check_slack(body: dict[str, Any]) -> None:
    """Slack's incoming webhook message: `text` and Block Kit blocks within their documented limits."""
    assert isinstance(body["text"], str) and body["text"]
    assert 1 <= len(body["blocks"]) <= 50
    for block in body["blocks"]:
        assert block["type"] in SLACK_BLOCKS, block
        if block["type"] == "header":
            assert block["text"]["type"] == "plain_text" and len(block["text"]["text"]) <= 150
        if block["type"] == "section":
            texts = [block["text"]] if "text" in block else block["fields"]
            assert len(texts) <= 10
            for text in texts:
                assert text["type"] in ("mrkdwn", "plain_text") and len(text["text"]) <= 3000
        if block["type"] == "actions":
            for element in block["elements"]:
                assert element["type"] == "button" and element["url"].startswith(PUBLIC_URL)


def check_discord(body: dict[str, Any]) -> None:
    """Discord's execute-webhook body: embeds within the documented limits (6000 characters in all)."""
    assert 1 <= len(body["embeds"]) <= 10
    total = 0
    for embed in body["embeds"]:
        assert len(embed["title"]) <= 256 and len(embed["description"]) <= 4096
        assert isinstance(embed["color"], int) and 0 <= embed["color"] <= 0xFFFFFF
        assert embed["url"].startswith(PUBLIC_URL)
        datetime.datetime.fromisoformat(embed["timestamp"])
        assert len(embed["fields"]) <= 25
        for f in embed["fields"]:
            assert 1 <= len(f["name"]) <= 256 and 1 <= len(f["value"]) <= 1024
        total += len(embed["title"]) + len(embed["description"]) + sum(
            len(f["name"]) + len(f["value"]) for f in embed["fields"]) + len(embed["footer"]["text"])
    assert total <= 6000


def no_secret(data: bytes | str) -> None:
    text = data if isinstance(data, str) else data.decode(errors="replace")
    for form in (SECRET, base64.b64encode(SECRET.encode()).decode()):
        assert form not in text


async def test_a_failing_then_fixed_pipeline_sends_one_failure_and_one_fixed_message_everywhere(
        settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo, receiver: Receiver,
        tmp_path: Path) -> None:
    fake_engine.on("make test", Script(exit_code=1, lines=["collecting", "deploy key is $DEPLOY",
                                                            "FAILED tests/test_parser.py::test_tokens"]),
                   Script(lines=["2 passed"]))
    repo, sha = make_local_repo({".forgeci.toml": PIPELINE})
    with smtp_server() as (plain_port, plain_mails, _), \
            smtp_server(tmp_path, starttls=True) as (tls_port, tls_mails, cafile):
        config = with_notify(settings, notify_toml(receiver, plain_port, tls_port, cafile))
        client = await open_client(config, environ(receiver), workers=True, engine=fake_engine)
        try:
            failed = await run_pipeline(client, repo, sha)
            fixed = await run_pipeline(client, repo, sha)
            again = await run_pipeline(client, repo, sha)  # a plain success: nobody asked to hear it
            queue = client.app[RUNTIME].queue
            assert [queue.pipeline(p).state.value for p in (failed, fixed, again)] == ["failure", "success",
                                                                                      "success"]
        finally:
            await client.close()
        mails_plain, mails_tls = list(plain_mails), list(tls_mails)

    for path, check in (("/slack", check_slack), ("/discord", check_discord), ("/hook", None)):
        posts = receiver.of(path)
        assert len(posts) == 2, (path, [p.body[:200] for p in posts])
        for post in posts:
            no_secret(post.body)
            if check is not None:
                check(post.json)
    assert receiver.refused == []  # every webhook post carried a valid signature

    slack_failed, slack_fixed = (p.json for p in receiver.of("/slack"))
    assert "failed" in slack_failed["blocks"][0]["text"]["text"] and "is fixed" in slack_fixed["text"]
    slack_text = json.dumps(slack_failed)
    assert "FAILED tests/test_parser.py::test_tokens" in slack_text and "deploy key is ***" in slack_text
    discord_failed, discord_fixed = (p.json["embeds"][0] for p in receiver.of("/discord"))
    assert discord_failed["color"] == 0xCF222E and discord_fixed["color"] == 0x2DA44E
    assert any("test" in f["name"] and "FAILED" in f["value"] for f in discord_failed["fields"])

    hook_failed, hook_fixed = receiver.of("/hook")
    assert [hook_failed.json["event"], hook_fixed.json["event"]] == ["failure", "fixed"]
    assert hook_failed.headers["X-Forgeci-Event"] == "failure"
    assert hook_failed.headers["X-Forgeci-Delivery"] == hook_failed.json["delivery"]
    body = hook_failed.json["pipeline"]
    assert (body["id"], body["state"], body["branch"], body["sha"]) == (failed, "failure", "main", sha)
    assert body["pusher"] and body["url"] == f"{PUBLIC_URL}/dashboard/pipelines/{failed}"
    [job] = body["failed_jobs"]
    assert (job["step"], job["exit_code"], job["state"]) == ("test", 1, "failure")
    assert job["log"][-1] == "FAILED tests/test_parser.py::test_tokens" and "deploy key is ***" in job["log"]
    assert hook_fixed.json["pipeline"]["failed_jobs"] == []

    for mails, recipients, tls in ((mails_plain, ["ops@example.test", "dev@example.test"], False),
                                   (mails_tls, ["ops@example.test"], True)):
        assert len(mails) == 2, mails
        first, second = mails
        assert isinstance(first, Mail) and first.recipients == recipients and first.sender == "forgeci@example.test"
        assert first.tls is tls and first.login == (SMTP_USER if tls else None)
        assert first.message["Subject"].strip() == f"[forgeci] {body['repo']} main: pipeline #{failed} failed"
        assert second.message["Subject"].strip() == f"[forgeci] {body['repo']} main: pipeline #{fixed} is fixed"
        assert first.message["To"] == ", ".join(recipients)
        plain, html = text_parts(first.message)
        assert ": failure at step test (exit 1)" in plain and "FAILED tests/test_parser.py" in plain
        assert "<pre>" in html and f"/dashboard/pipelines/{failed}" in html
        for mail in mails:
            no_secret(mail.message.as_bytes())


async def test_a_message_that_keeps_failing_is_dropped_with_a_log_line_and_counted(
        settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo, receiver: Receiver,
        caplog: pytest.LogCaptureFixture) -> None:
    receiver.status = 503
    toml = ('[[notify]]\nkind = "webhook"\nurl_env = "FORGECI_HOOK_URL"\nsecret_env = "FORGECI_HOOK_SECRET"\n'
            'on = ["always"]\nretries = 2\nbackoff = 0.1\n')
    fake_engine.on("make test", Script())
    repo, sha = make_local_repo({".forgeci.toml": PIPELINE})
    client = await open_client(with_notify(settings, toml), environ(receiver), workers=True, engine=fake_engine)
    try:
        with caplog.at_level(logging.INFO, logger="bot.notify"):
            pipeline_id = await run_pipeline(client, repo, sha)
        [(row, state)] = [r for r in client.app[RUNTIME].queue.notifications_of(pipeline_id) if r[0].target]
        assert (state, row.attempts, row.event) == ("dropped", 3, "success")
        assert len(receiver.refused) == 3 and receiver.received == []
        dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
        assert len(dropped) == 1 and "webhook-1" in dropped[0] and "HTTP 503" in dropped[0], dropped
        text = await (await client.get("/metrics", params={"format": "prometheus"})).text()
        assert 'forgeci_notifications_total{kind="webhook",state="dropped"} 1' in text
        metrics = await (await client.get("/metrics")).json()
        assert metrics["notifications"] == {"webhook": {"dropped": 1}}
    finally:
        await client.close()


@pytest.mark.slow
async def test_an_endpoint_down_for_30_seconds_gets_the_message_once_when_it_is_back(
        settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo) -> None:
    receiver = Receiver()  # not listening yet: connections are refused
    toml = ('[[notify]]\nkind = "webhook"\nurl_env = "FORGECI_HOOK_URL"\nsecret_env = "FORGECI_HOOK_SECRET"\n'
            'on = ["failure"]\nretries = 12\nbackoff = "1s"\ntimeout = "5s"\n')
    fake_engine.on("make test", Script(exit_code=1, lines=["boom"]))
    repo, sha = make_local_repo({".forgeci.toml": PIPELINE})
    client = await open_client(with_notify(settings, toml), environ(receiver), workers=True, engine=fake_engine)
    queue = client.app[RUNTIME].queue
    try:
        pipeline_id = await push_repo(client, repo, sha)
        await wait_until(lambda: queue.pipeline(pipeline_id).state.is_terminal, 60, "the pipeline's end")
        down_since = time.monotonic()

        def target_row() -> Any:
            rows = [r for r in queue.notifications_of(pipeline_id) if r[0].target]
            return rows[0] if rows else None

        while time.monotonic() - down_since < 30:
            await asyncio.sleep(1)
            row = target_row()
            assert row is None or row[1] == "pending", row  # never dropped, never "delivered" while down
        assert target_row()[0].attempts >= 3  # it kept trying
        await receiver.start()
        try:
            await wait_until(lambda: target_row()[1] == "delivered", 60, "delivery once the endpoint is back")
            await asyncio.sleep(3)
            assert len(receiver.of("/hook")) == 1 and receiver.refused == []
            assert receiver.of("/hook")[0].json["pipeline"]["id"] == pipeline_id
        finally:
            await receiver.stop()
    finally:
        await client.close()


async def test_a_hanging_endpoint_blocks_neither_the_runner_nor_the_api(
        settings: Settings, fake_engine: FakeEngine, make_local_repo: MakeRepo, receiver: Receiver) -> None:
    receiver.hang = True  # reads the request, never answers
    toml = ('[[notify]]\nkind = "webhook"\nurl_env = "FORGECI_HOOK_URL"\nsecret_env = "FORGECI_HOOK_SECRET"\n'
            'on = ["always"]\ntimeout = "10m"\n')
    fake_engine.on("make test", Script())
    repo, sha = make_local_repo({".forgeci.toml": PIPELINE})
    client = await open_client(with_notify(settings, toml), environ(receiver), workers=True, engine=fake_engine)
    queue = client.app[RUNTIME].queue
    try:
        first = await push_repo(client, repo, sha)
        await wait_until(lambda: receiver.hanging, 60,
                         "the first message under way")
        second = await push_repo(client, repo, sha)  # the runner goes on while the endpoint hangs
        await wait_until(lambda: queue.pipeline(second).state.is_terminal, 60, "the second pipeline's end")
        assert (await client.get("/healthz")).status == 200
        assert (await client.get(f"/pipelines/{first}")).status == 200
        await wait_until(lambda: len(receiver.hanging) == 2, 60, "both messages under way at once")
        for pipeline_id in (first, second):
            [(row, state)] = [r for r in queue.notifications_of(pipeline_id) if r[0].target]
            assert (state, row.attempts) == ("pending", 1)  # still waiting for an answer, not given up
    finally:
        await client.close()


def test_a_huge_failure_stays_within_the_documented_limits() -> None:
    from bot.notify import discord, email, slack
    from bot.notify.message import FailedJob, Message

    long_line = "x" * 290
    failed = tuple(FailedJob(i, f"job-{i} " + "n" * 300, "failure", "s" * 100, 1, "e" * 500, (long_line,) * 40,
                             f"{PUBLIC_URL}/dashboard/jobs/{i}") for i in range(10))
    message = Message(pipeline_id=7, event="failure", state="failure", repo="acme/" + "r" * 300, repo_url="",
                      branch="b" * 250, ref="refs/heads/x", sha="c" * 40, pusher="p" * 80, commit="m" * 300,
                      url=f"{PUBLIC_URL}/dashboard/pipelines/7", duration=3.0, finished_at=time.time(),
                      error="boom " * 400, failed=failed)
    check_slack(slack.payload(message))
    check_discord(discord.payload(message))
    assert "x" * 100 in json.dumps(discord.payload(message))  # the excerpts shrank, but are there
    assert email.subject(message).startswith("[forgeci] acme/")


def sample_message() -> Any:
    from bot.notify.message import Message

    return Message(pipeline_id=3, event="failure", state="failure", repo="acme/app", repo_url="", branch="main",
                   ref="refs/heads/main", sha="d" * 40, pusher="ada", commit="Fix it", url=f"{PUBLIC_URL}/x",
                   duration=1.0, finished_at=time.time(), error=None)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # it is TLS: from the first byte
async def test_email_over_implicit_tls_and_a_refused_login(tmp_path: Path) -> None:
    from bot.notify import email
    from bot.notify.base import DeliveryError
    from config.notify import NotifyTarget

    with smtp_server(tmp_path, implicit=True) as (port, mails, cafile):
        target = NotifyTarget(kind="email", from_addr="ci@example.test", to=("ops@example.test",),
                              smtp=f"smtp://127.0.0.1:{port}", tls="tls", ca_file=str(cafile))
        await email.send(target, sample_message(), "9", user=SMTP_USER, password=SMTP_PASSWORD, timeout=30)
        [mail] = mails
        assert mail.tls and mail.login == SMTP_USER and mail.recipients == ["ops@example.test"]
        assert "pipeline #3 failed" in mail.message["Subject"]
        with pytest.raises(DeliveryError) as refused:
            await email.send(target, sample_message(), "10", user=SMTP_USER, password="wrong", timeout=30)
        assert refused.value.permanent and "535" in str(refused.value) and "wrong" not in str(refused.value)
        untrusted = dataclasses.replace(target, ca_file="")  # a self-signed certificate is not trusted by default
        with pytest.raises(DeliveryError) as unverified:
            await email.send(untrusted, sample_message(), "11", user=SMTP_USER, password=SMTP_PASSWORD, timeout=30)
        assert not unverified.value.permanent and len(mails) == 1
