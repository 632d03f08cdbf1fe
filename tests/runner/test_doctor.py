"""`forgeci doctor` on this machine (set up by scripts/setup: every check ok or warn) and with one thing broken at a
time: the job image, the store, a forge token; plus the checks' rules on prepared facts."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from config.settings import Settings
from runner import doctor
from runner.doctor import Check, Context, Host, Status
from runner.doctor_forges import forge_checks
from runner.podman_user import PodmanUser
from tests.bot.webhook_helpers import FakeForge, Recorded, fake_forge
from tests.reliability.harness import free_port

__all__ = ["fake_forge"]  # a fixture

ROOT = Path(__file__).resolve().parents[2]
FORGE_VARIABLES = [name for forge in ("GITHUB", "GITEA", "GITLAB") for name in
                   (f"FORGECI_{forge}_TOKEN", f"FORGECI_{forge}_WEBHOOK_SECRET")]


def run_doctor(tmp_path: Path, config: Mapping[str, Any] | None = None,
               env: Mapping[str, str] | None = None) -> tuple[int, dict[str, tuple[str, str]]]:
    """`forgeci doctor` as a process: its exit code, and each check's (status, text with its fix)."""
    import tomli_w

    args = [sys.executable, "-m", "forgeci_cli"]
    if config is not None:
        path = tmp_path / "forgeci.toml"
        path.write_text(tomli_w.dumps(dict(config)))
        args += ["--config", str(path)]
    clean = {k: v for k, v in os.environ.items() if k not in FORGE_VARIABLES and k != "FORGECI_CONFIG"}
    result = subprocess.run([*args, "doctor"], capture_output=True, text=True, timeout=180, cwd=tmp_path,
                            env={**clean, "PYTHONPATH": str(ROOT), **(env or {})})
    assert "Traceback" not in result.stderr, result.stderr
    checks: dict[str, tuple[str, str]] = {}
    last = ""
    for line in result.stdout.splitlines():
        if line.startswith("      -> "):
            status, text = checks[last]
            checks[last] = (status, f"{text} {line.strip()}")
        elif line[:4].strip() in ("ok", "warn", "fail"):
            status, rest = line.split(None, 1)
            last, text = rest.split(": ", 1)
            assert last not in checks, f"two lines for {last}"
            checks[last] = (status, text)
    assert checks, result.stdout + result.stderr
    return result.returncode, checks


def failing(checks: dict[str, tuple[str, str]]) -> dict[str, str]:
    return {name: text for name, (status, text) in checks.items() if status == "fail"}


@pytest.mark.podman
def test_on_the_set_up_machine_every_check_is_ok_or_warn(tmp_path: Path, podman_user: PodmanUser) -> None:
    code, checks = run_doctor(tmp_path)  # no settings file: the defaults scripts/setup prepared the host for
    assert failing(checks) == {} and code == 0, checks
    assert {"podman user", "podman", "runtime", "storage driver", "subuid", "subgid", "/dev/net/tun", "job image",
            "data dir", "free space", "store", "github", "gitea", "gitlab"} <= set(checks)


@pytest.fixture
def base_config(shared_dir: Path, busybox_image: str) -> dict[str, Any]:
    return {"data_dir": str(shared_dir / "data"), "runner": {"image": busybox_image, "network": "none"}}


@pytest.mark.podman
def test_a_missing_job_image_fails_its_line_with_how_to_build_it(tmp_path: Path, base_config: dict[str, Any]) -> None:
    config = {**base_config, "runner": {**base_config["runner"], "image": "localhost/forgeci-no-such:tag"}}
    code, checks = run_doctor(tmp_path, config)
    assert code == 1
    assert list(failing(checks)) == ["job image"], checks
    text = checks["job image"][1]
    assert "localhost/forgeci-no-such:tag is not in" in text and "forgeci image build --tag" in text


@pytest.mark.podman
def test_a_store_that_refuses_connections_fails_its_line(tmp_path: Path, base_config: dict[str, Any]) -> None:
    port = free_port()  # nothing listens there: connections are refused
    config = {**base_config, "storage": {"url": f"s3://forgeci?endpoint=http://127.0.0.1:{port}&secure=false",
                                         "connect_timeout": "2s", "read_timeout": "2s"}}
    code, checks = run_doctor(tmp_path, config, {"FORGECI_S3_ACCESS_KEY": "k", "FORGECI_S3_SECRET_KEY": "s"})
    assert code == 1
    assert list(failing(checks)) == ["store"], checks
    text = checks["store"][1]
    assert f"127.0.0.1:{port}" in text and "storage.url" in text


def token_checking(forge: str, good: str) -> Any:
    """A stand-in forge API that knows one token, as the real ones do for GET /user."""
    header = {"github": "Authorization", "gitea": "Authorization", "gitlab": "PRIVATE-TOKEN"}[forge]
    want = {"github": f"Bearer {good}", "gitea": f"token {good}", "gitlab": good}[forge]

    def answer(request: Recorded) -> web.Response | None:
        if not request.path.startswith(f"/{forge}/") or not request.path.endswith("/user"):
            return None
        if request.headers.get(header) == want:
            return web.json_response({"login": "forgeci-bot", "username": "forgeci-bot"})
        return web.json_response({"message": "Bad credentials"}, status=401)

    return answer


@pytest.mark.podman
async def test_a_wrong_forge_token_fails_its_line_against_a_stand_in_forge(
        tmp_path: Path, base_config: dict[str, Any], fake_forge: FakeForge) -> None:
    for forge in ("github", "gitea", "gitlab"):
        fake_forge.script += [token_checking(forge, f"good-{forge}-token")] * 2
    config = {**base_config, **{forge: {"api_url": f"{fake_forge.url}/{forge}/api"}
                                for forge in ("github", "gitea", "gitlab")}}
    secrets = {f"FORGECI_{f}_WEBHOOK_SECRET": "a-long-enough-webhook-secret-0123" for f in ("GITHUB", "GITEA",
                                                                                            "GITLAB")}
    good = {**secrets, **{f"FORGECI_{f.upper()}_TOKEN": f"good-{f}-token" for f in ("github", "gitea", "gitlab")}}
    code, checks = await asyncio.to_thread(run_doctor, tmp_path, config, good)
    assert code == 0 and failing(checks) == {}, checks
    assert "forgeci-bot" in checks["gitlab token"][1]

    wrong = {**good, "FORGECI_GITEA_TOKEN": "not-the-token"}
    code, checks = await asyncio.to_thread(run_doctor, tmp_path, config, wrong)
    assert code == 1
    assert list(failing(checks)) == ["gitea token"], checks
    assert "401" in checks["gitea token"][1] and "FORGECI_GITEA_TOKEN" in checks["gitea token"][1]
    calls = [r for r in fake_forge.requests if r.path.endswith("/user")]
    assert len(calls) == 6  # one API call per configured forge and run


def test_only_forges_whose_variables_are_set_are_checked() -> None:
    calls: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: calls.append(request) or httpx.Response(200, json={}))
    checks = forge_checks(Settings.default(), {}, transport=transport)
    assert [(c.name, c.status) for c in checks] == [(f, Status.ok) for f in ("github", "gitea", "gitlab")]
    assert calls == []
    settings = dataclasses.replace(Settings.default(), gitlab=dataclasses.replace(Settings.default().gitlab,
                                                                                  api_url=""))
    checks = forge_checks(settings, {"FORGECI_GITLAB_TOKEN": "t", "FORGECI_GITHUB_WEBHOOK_SECRET": "short"},
                          transport=transport)
    by_name = {c.name: c for c in checks}
    assert by_name["gitlab token"].status is Status.fail and "api_url" in by_name["gitlab token"].detail
    assert by_name["gitlab webhooks"].status is Status.warn  # token without a secret: deliveries refused
    assert by_name["github webhooks"].status is Status.warn and "5 characters" in by_name["github webhooks"].detail
    assert by_name["github token"].status is Status.warn  # a secret without a token: no statuses
    assert calls == []


def test_forge_answers_become_lines(tmp_path: Path) -> None:
    def respond(status: int) -> httpx.MockTransport:
        return httpx.MockTransport(lambda request: httpx.Response(status, json={"login": "bot"}))

    env = {"FORGECI_GITHUB_TOKEN": "t", "FORGECI_GITHUB_WEBHOOK_SECRET": "x" * 32}
    found = {status: next(c for c in forge_checks(Settings.default(), env, transport=respond(status))
                          if c.name == "github token") for status in (200, 401, 403, 500)}
    assert [found[s].status for s in (200, 401, 403, 500)] == [Status.ok, Status.fail, Status.warn, Status.fail]

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    down = next(c for c in forge_checks(Settings.default(), env, transport=httpx.MockTransport(refuse))
                if c.name == "github token")
    assert down.status is Status.fail and "cannot reach https://api.github.com/user" in down.detail


def test_a_github_app_is_checked_with_its_jwt(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "app.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    seen: list[httpx.Request] = []

    def app_api(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"slug": "forgeci-ci"})

    github = dataclasses.replace(Settings.default().github, app_id=1234, private_key_path=str(pem))
    settings = dataclasses.replace(Settings.default(), github=github)
    checks = forge_checks(settings, {"FORGECI_GITHUB_WEBHOOK_SECRET": "x" * 32},
                          transport=httpx.MockTransport(app_api))
    app = next(c for c in checks if c.name == "github app")
    assert app.status is Status.ok and "forgeci-ci" in app.detail
    assert seen[0].url.path == "/app" and seen[0].headers["Authorization"].count(".") == 2  # Bearer <JWT>
    pem.write_text("not a key")
    bad = next(c for c in forge_checks(settings, {}, transport=httpx.MockTransport(app_api)) if c.name == "github app")
    assert bad.status is Status.fail and "not a usable private key" in bad.detail


# -- the host checks on prepared facts -------------------------------------------------------------------------


def context(tmp_path: Path, info: dict[str, Any] | None = None, network: str = "slirp4netns", **host: Any) -> Context:
    settings = Settings.default()
    settings = dataclasses.replace(settings, runner=dataclasses.replace(settings.runner, network=network))
    user = PodmanUser("forgeci", 1001, 1001, "/home/forgeci", "/run/user/1001", True)
    return Context(settings, {}, Host(**host), user=user, info=info)


HYBRID = ("24 1 0:21 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n"
          "25 24 0:22 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
          "26 24 0:23 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
UNIFIED = "24 1 0:21 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"


def test_the_runtime_is_judged_against_the_cgroup_layout(tmp_path: Path) -> None:
    mounts = tmp_path / "mountinfo"
    for text, layout in ((HYBRID, "hybrid"), (UNIFIED, "v2"), ("26 24 0:23 / /x rw - cgroup cgroup rw\n", "v1")):
        mounts.write_text(text)
        assert doctor.cgroup_layout(mounts) == layout
    mounts.write_text(HYBRID)

    def runtime(name: str) -> Check:
        info = {"host": {"ociRuntime": {"name": name, "version": f"{name} 1.0"}, "cgroupVersion": "v1"}}
        return doctor.check_runtime(context(tmp_path, info, mountinfo=mounts))[0]

    assert runtime("crun").status is Status.fail and 'runtime = "runc"' in runtime("crun").fix
    assert runtime("runc").status is Status.ok
    mounts.write_text(UNIFIED)
    assert runtime("crun").status is Status.ok


def test_vfs_storage_warns_and_subuid_ranges_are_counted(tmp_path: Path) -> None:
    vfs = doctor.check_storage(context(tmp_path, {"store": {"graphDriverName": "vfs"}}))[0]
    assert vfs.status is Status.warn and "overlay" in vfs.fix
    subuid, subgid = tmp_path / "subuid", tmp_path / "subgid"
    subuid.write_text("other:100000:65536\nforgeci:200000:65536\n")
    subgid.write_text("1001:200000:1000\n")
    checks = doctor.check_subids(context(tmp_path, subuid=subuid, subgid=subgid))
    assert [c.status for c in checks] == [Status.ok, Status.warn]
    subgid.write_text("")
    missing = doctor.check_subids(context(tmp_path, subuid=subuid, subgid=subgid))[1]
    assert missing.status is Status.fail and "usermod --add-subgids" in missing.fix


def test_dev_net_tun_must_be_usable_unless_jobs_have_no_network(tmp_path: Path) -> None:
    absent = tmp_path / "tun"
    assert doctor.check_tun(context(tmp_path, tun=absent))[0].status is Status.fail
    assert doctor.check_tun(context(tmp_path, network="none", tun=absent))[0].status is Status.ok
    null = Path("/dev/null")  # a character device everyone may use, like a set-up /dev/net/tun
    assert doctor.check_tun(context(tmp_path, tun=null))[0].status is Status.ok
    regular = tmp_path / "file"
    regular.write_text("")
    assert doctor.check_tun(context(tmp_path, tun=regular))[0].status is Status.fail


def test_the_report_prints_a_line_per_check_and_exits_1_only_on_a_failure() -> None:
    out: list[str] = []
    checks = [doctor.ok("a", "fine"), doctor.warn("b", "meh", "do x")]
    assert doctor.report(checks, out.append) == 0
    assert out == ["ok    a: fine", "warn  b: meh\n      -> do x", "1 ok, 1 warning(s), 0 failed"]
    assert doctor.report([*checks, doctor.fail("c", "broken", "do y")], out.append) == 1


def test_doctor_reads_the_services_environment_file(tmp_path: Path) -> None:
    env_file = tmp_path / "forgeci.env"
    env_file.write_text('# the service\'s secrets\nFORGECI_GITLAB_WEBHOOK_SECRET="a-long-enough-webhook-secret"\n')
    config = tmp_path / "forgeci.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    result = subprocess.run([sys.executable, "-m", "forgeci_cli", "--config", str(config), "doctor", "--env-file",
                             str(env_file)], capture_output=True, text=True, timeout=180, cwd=tmp_path,
                            env={**{k: v for k, v in os.environ.items() if k not in FORGE_VARIABLES},
                                 "PYTHONPATH": str(ROOT)})
    assert "gitlab webhooks: secret set ($FORGECI_GITLAB_WEBHOOK_SECRET)" in result.stdout, result.stdout


def test_the_queue_database_version_is_read_without_opening_it(tmp_path: Path) -> None:
    from runner.queue import MIGRATIONS, Queue
    from tests.runner.test_migrations import build

    ctx = context(tmp_path)
    ctx.settings = dataclasses.replace(ctx.settings, data_dir=tmp_path)
    db = tmp_path / "queue.db"
    assert doctor.check_database(ctx)[0].status is Status.ok  # not created yet
    build(db, 2)
    old = doctor.check_database(ctx)[0]
    assert old.status is Status.warn and "forgeci db migrate" in old.fix
    assert not (tmp_path / "queue.db-shm").exists()  # nothing created next to it
    db.unlink()
    Queue(db).close()
    assert doctor.check_database(ctx)[0].status is Status.ok
    import sqlite3

    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    assert doctor.check_database(ctx)[0].status is Status.fail
    db.write_bytes(b"garbage" * 20)
    assert doctor.check_database(ctx)[0].status is Status.fail
