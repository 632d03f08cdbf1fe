"""Security checks of a running system: a job container's hardening, and secrets compared in constant time."""

from __future__ import annotations

import ast
import asyncio
import hmac
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from runner.models import JobState
from runner.podman_user import PodmanUser
from runner.runtime import Runtime
from tests.bot.api_helpers import TOKEN, api_client, api_settings, enqueue, runtime_of, with_server
from tests.bot.webhook_helpers import ENV as WEBHOOK_ENV
from tests.bot.webhook_helpers import gitea_headers, github_headers, gitlab_headers
from tests.reliability.harness import Ledger
from tests.reliability.report import Row
from tests.runner.test_executor import log_lines, submit, wait_state, wait_terminal

__all__ = ["api_settings"]

MakeRepo = Callable[..., tuple[Path, str]]
REPO_ROOT = Path(__file__).resolve().parents[2]

INSPECT_STEP = '''snapshot = "never"
[[steps]]
name = "inside"
run = "grep -E '^(NoNewPrivs|Uid)' /proc/self/status; ls /sys/class/net; while [ ! -f go ]; do sleep 0.1; done"
'''


def status_of(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def container_processes(init_pid: int) -> list[int]:
    """Host pids of every process in the container (those in its pid namespace)."""
    ns = Path(f"/proc/{init_pid}/ns/pid").readlink()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "ns" / "pid").readlink() == ns:
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
@pytest.mark.podman
async def test_a_running_jobs_container_is_hardened(runtime: Runtime, make_repo: MakeRepo, podman_user: PodmanUser,
                                                    report: Callable[[str], Row]) -> None:
    row = report("Security: a running job's container inspected (engine API and the host's /proc)")
    ledger = Ledger()
    repo, _ = make_repo({".forgeci.toml": INSPECT_STEP})
    job_id = submit(runtime, repo)
    ledger.submitted_job(job_id)
    await wait_state(runtime, job_id, JobState.running)
    deadline = time.monotonic() + 60
    while not (containers := await runtime.engine.job_containers()) or len(log_lines(runtime, job_id, "inside")) < 3:
        assert time.monotonic() < deadline, "the job's container never came up"
        await asyncio.sleep(0.1)
    [(container_id, labelled_job)] = containers.items()
    info: dict[str, Any] = await runtime.engine.inspect(container_id)
    host = info["HostConfig"]
    engine = await runtime.engine.info()
    init_pid = int(info["State"]["Pid"])
    statuses: dict[int, dict[str, str]] = {}
    userns: dict[int, Path] = {}
    for pid in container_processes(init_pid):
        try:
            statuses[pid], userns[pid] = status_of(pid), Path(f"/proc/{pid}/ns/user").readlink()
        except OSError:  # a short-lived exec (the runner's own probe) ended in between
            statuses.pop(pid, None)
    processes = list(statuses)
    inside = log_lines(runtime, job_id, "inside")
    (runtime.layout.workspaces / str(job_id) / "go").write_text("")
    job = await wait_terminal(runtime, job_id)
    assert job.state is JobState.success

    assert engine["host"]["security"]["rootless"] is True
    assert labelled_job == job_id and info["Config"]["Labels"]["forgeci.instance"] == str(runtime.layout.root)
    assert "no-new-privileges" in host["SecurityOpt"] and host["Privileged"] is False and not host["CapAdd"]
    assert host["NetworkMode"] == runtime.settings.runner.network == "none"
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts["/workspace"]["Source"] == str(runtime.layout.workspaces / str(job_id))
    assert set(mounts) <= {"/workspace", "/etc/ssl/host-ca.crt"}, mounts  # never the Podman socket or a host dir
    assert all(not m["RW"] for d, m in mounts.items() if d != "/workspace")
    # The kernel's view: every process of the container, the step's included, runs as the Podman user or its
    # subordinate ids, in a user namespace of its own, and can never gain privileges.
    assert len(processes) >= 3, processes  # init, sleep, the step's shell
    for pid, status in statuses.items():
        uids = {int(u) for u in status["Uid"].split()}
        assert 0 not in uids and (podman_user.uid in uids or min(uids) >= 100000), (pid, status["Uid"])
        assert status["NoNewPrivs"] == "1", (pid, status)
        assert userns[pid] != Path("/proc/self/ns/user").readlink(), pid
    assert "NoNewPrivs:\t1" in inside and inside[-1] == "lo", inside  # uid 0 inside, no network but loopback
    row.happened = (f"rootless engine; labels forgeci.job={job_id} and forgeci.instance; no-new-privileges (and "
                    f"NoNewPrivs=1 in /proc for all {len(processes)} processes); not privileged, no added "
                    f"capabilities; network `none` (only lo inside); mounts: the workspace (rw) and the CA bundle "
                    f"(ro) only; host uids of the processes: {sorted({s['Uid'].split()[0] for s in statuses.values()})}"
                    )
    assert row.count(ledger, runtime.layout.db).total == 0


# -- constant-time comparisons ---------------------------------------------------------------------------------

SECRETISH = re.compile(r"token|secret|signature|passw|csrf|digest|hmac|credential|api_key|private_key", re.I)
# Comparisons whose operands have secret-sounding names but hold no secret; each was read and judged.
NOT_SECRETS = {
    "(token is None) == (app is None)": "whether two settings are present, not their values",
    "digest != checksum": "an archive's sha256 against the index's: integrity, public",
    "image_label(user, tag, HASH_LABEL) == digest": "an image's content hash",
    "'\\n' in credentials": "a search for a line break",
    "'\\r' in credentials": "a search for a line break",
    "name in state.secrets.values": "a secret's name among the configured names (a mapping's keys)",
    "args.token_command == 'create'": "the CLI's subcommand word",
    "self.label(f'{REPOSITORY}:{digest}', HASH_LABEL) != digest": "a built image's content hash",
    "conn.execute('UPDATE agent_tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL', (self._clock(), "
    "name)).rowcount == 1": "whether a token's name was revoked (a count)",
}


def secret_comparisons() -> list[str]:
    """Every ==, !=, in, not in of forgeci's code with an operand whose name sounds secret, as `file: expression`."""
    found = []
    for folder in ("bot", "runner", "config", "tui"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Compare) and any(
                        isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
                    if any(SECRETISH.search(ast.unparse(o)) for o in [node.left, *node.comparators]):
                        found.append(f"{path.relative_to(REPO_ROOT)}: {ast.unparse(node)}")
    return found


async def test_tokens_and_webhook_secrets_are_compared_in_constant_time(
    api_settings: Settings, monkeypatch: pytest.MonkeyPatch, report: Callable[[str], Row],
) -> None:
    row = report("Security: forged tokens, signatures, cookies and CSRF tokens (ASCII and not) against every "
                 "check; a scan of the code for secrets compared with == or in")
    unreviewed = [c for c in secret_comparisons() if c.split(": ", 1)[1] not in NOT_SECRETS]
    assert unreviewed == [], "secrets must be compared with hmac.compare_digest:\n" + "\n".join(unreviewed)

    calls: list[tuple[type, type]] = []
    real = hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        calls.append((type(a), type(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    settings = with_server(api_settings, protect_reads=True)
    ledger = Ledger()
    checked: dict[str, int] = {}
    async with api_client(settings, {"FORGECI_API_TOKEN": TOKEN, **WEBHOOK_ENV}) as client:
        ledger.submitted_job(enqueue(runtime_of(client).queue))

        async def attempt(what: str, expected: set[int], method: str, path: str, compared: bool = True,
                          **kw: Any) -> None:
            before = len(calls)
            response = await client.request(method, path, allow_redirects=False, **kw)
            assert response.status in expected, (what, response.status, await response.text())
            if compared:  # a GitHub signature not of the form sha256=HEX is refused unread: it can match nothing
                assert len(calls) > before, f"{what}: no constant-time comparison happened"
            checked[what] = checked.get(what, 0) + 1

        body = b'{"zen": "x", "hook_id": 1}'
        for forged in ("Bearer wrong", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", "Bearer \xe9\xe9",
                       "Bearer " + "x" * 5000):
            await attempt("API token", {401}, "POST", "/jobs/cancel", json={"id": 1},
                          headers={"Authorization": forged})
            await attempt("API token (reads)", {401}, "GET", "/jobs", headers={"Authorization": forged})
        later = int(time.time()) + 999
        for cookie in ("1.a.a.b", f"{later}.nonce.a." + "0" * 64, "1.\xe9.a.\xe9", "x" * 4000 + ".sig"):
            await attempt("session cookie", {303, 401}, "GET", "/dashboard/jobs/1",
                          headers={"Cookie": f"forgeci_session={cookie}"})
        for token in ("wrong", TOKEN[:-1], "\xe9"):
            await attempt("dashboard sign-in", {200, 303, 401, 403}, "POST", "/dashboard/login",
                          data={"token": token, "next": "/dashboard"})
        signed_in = await client.post("/dashboard/login", data={"token": TOKEN, "next": "/dashboard"},
                                      allow_redirects=False)
        assert signed_in.status == 303
        for csrf in ("0" * 32, "\xe9" * 32, "", "x" * 5000):
            await attempt("dashboard CSRF token", {403}, "POST", "/dashboard/jobs/1/cancel", data={"csrf": csrf})
        client.session.cookie_jar.clear()
        for signature in ("sha256=" + "0" * 64, "sha256=\xe9", "0" * 64):
            await attempt("GitHub signature", {401}, "POST", "/webhooks/github",
                          signature.isascii() and signature.startswith("sha256="), data=body,
                          headers={**github_headers("ping", body), "X-Hub-Signature-256": signature})
            await attempt("Gitea signature", {401}, "POST", "/webhooks/gitea", data=body,
                          headers={**gitea_headers("push", body), "X-Gitea-Signature": signature})
            await attempt("GitLab token", {401}, "POST", "/webhooks/gitlab", data=body,
                          headers={**gitlab_headers("Push Hook"), "X-Gitlab-Token": signature})
        db = runtime_of(client).layout.db
    # The comparisons always get two operands of one type (compare_digest refuses mixed or non-ASCII str).
    assert all(a is b for a, b in calls), calls
    row.happened = (f"{sum(checked.values())} forged credentials over {len(checked)} checks ({', '.join(checked)}): "
                    f"each refused, every well-formed one through hmac.compare_digest ({len(calls)} calls); no "
                    f"secret compared with == or `in` anywhere in bot/, runner/, config/, tui/")
    assert row.count(ledger, db).total == 0
