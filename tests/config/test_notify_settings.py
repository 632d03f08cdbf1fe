"""`[[notify]]` in forgeci.toml: the issue's example parses; every mistake is reported with its key."""

from __future__ import annotations

import pytest

from config.errors import ConfigError
from config.notify import NotifyTarget, named_targets
from config.settings import parse_settings

EXAMPLE = '''
[[notify]]
kind = "slack"               # slack | discord | webhook | email
url_env = "FORGECI_SLACK_URL"
on = ["failure", "fixed"]    # success | failure | fixed (first success after a failure) | error | always
repos = ["acme/*"]           # optional globs over owner/repo
branches = ["main"]          # optional

[[notify]]
kind = "email"
from = "forgeci@example.com"
to = ["ops@example.com"]
smtp = "smtp://mail.example.com:587"
tls = "starttls"             # starttls | tls | none
user_env = "FORGECI_SMTP_USER"
password_env = "FORGECI_SMTP_PASSWORD"
on = ["failure"]
'''


def errors(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_settings(text, "forgeci.toml")
    return str(info.value)


def test_the_issue_example_parses() -> None:
    slack, mail = parse_settings(EXAMPLE, "forgeci.toml").notify
    assert (slack.kind, slack.url_env, slack.on, slack.repos, slack.branches) == (
        "slack", "FORGECI_SLACK_URL", ("failure", "fixed"), ("acme/*",), ("main",))
    assert (mail.from_addr, mail.to, mail.smtp_host, mail.tls) == (
        "forgeci@example.com", ("ops@example.com",), ("mail.example.com", 587), "starttls")
    assert list(named_targets((slack, mail))) == ["slack-1", "email-2"]
    assert parse_settings("", "x").notify == ()


def test_which_pipeline_ends_a_target_hears() -> None:
    target = NotifyTarget(kind="slack", url_env="U", on=("failure", "fixed"), repos=("acme/*",), branches=("main",))
    assert target.wants("failure", "acme/app", "main") and target.wants("fixed", "acme/app", "main")
    assert not target.wants("success", "acme/app", "main")
    assert not target.wants("failure", "other/app", "main") and not target.wants("failure", "acme/app", "dev")
    assert NotifyTarget(kind="slack", url_env="U", on=("success",)).wants("fixed", "a/b", "x")
    assert NotifyTarget(kind="slack", url_env="U", on=("always",)).wants("cancelled", "a/b", "x")


def test_every_mistake_is_reported_with_its_key() -> None:
    text = errors('''
[[notify]]
kind = "slack"
[[notify]]
kind = "webhook"
url_env = "HOOK_URL"
[[notify]]
kind = "email"
to = ["not-an-address"]
[[notify]]
kind = "teams"
[[notify]]
kind = "discord"
url_env = "D"
on = ["sometimes"]
[[notify]]
kind = "discord"
url_env = "D"
[[notify]]
kind = "discord"
name = "discord-6"
url_env = "D"
''')
    for expected in ("notify[0].url_env: slack: missing required key",
                     "notify[1].secret_env: webhook: missing required key",
                     "notify[2].to: item 0: expected an e-mail address",
                     "notify[3].kind: expected one of 'slack', 'discord', 'webhook', 'email'",
                     "notify[4].on: item 0: expected one of success",
                     "notify[6].name: duplicate name 'discord-6' (also notify[5])"):
        assert expected in text, text
    assert "notify[0].smtp: email: missing required key" in errors('[[notify]]\nkind = "email"\nfrom = "a@b.c"\nto = ["d@e.f"]\n')
    assert "notify[0].smtp" in errors('[[notify]]\nkind = "email"\nfrom = "a@b.c"\nto = ["d@e.f"]\n'
                                      'smtp = "smtp://host:99999"\n')
    assert "notify: expected [[notify]] tables" in errors('notify = "slack"\n')
