"""`forgeci service install`: units systemd accepts, hardening that leaves rootless Podman working, and `forgeci
serve` started exactly as the unit starts it (command line, user, environment, kept hardening) answering /healthz."""

from __future__ import annotations

import os
import pwd
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from runner.podman_user import PodmanUser
from runner.service_units import KEPT, LEFT_OUT, UnitOptions, agent_unit, install_units, quote, serve_unit
from tests.reliability.harness import free_port, http_json, wait_for

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# systemd's PATH for system services (Debian 12, merged /usr)
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"


def words(text: str) -> list[str]:
    """A systemd command line split as systemd splits it (double quotes, backslash escapes, %% and $$)."""
    found = [m.group(1) if m.group(1) is not None else m.group(2)
             for m in re.finditer(r'"((?:[^"\\]|\\.)*)"|(\S+)', text)]
    return [re.sub(r"\\(.)", r"\1", w).replace("%%", "%").replace("$$", "$") for w in found]


def service_section(unit: str) -> dict[str, list[str]]:
    section, found = "", {}  # type: ignore[var-annotated]
    for line in unit.splitlines():
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def analyze(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60,
                          cwd=path.parent)


def test_the_generated_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    config = tmp_path / "etc dir" / "forgeci.toml"  # a space and a %: quoting and specifiers
    opts = UnitOptions(config=config, data_dir=tmp_path / "data", executable=(sys.executable, "-m", "forgeci_cli"),
                       environment={"FORGECI_LOG_LEVEL": "DEBUG", "NOTE": "50% of $HOME"},
                       server="https://ci.example.test")
    for unit in (serve_unit(opts), agent_unit(opts)):
        path = tmp_path / ("forgeci-agent.service" if " agent " in unit else "forgeci.service")
        path.write_text(unit)
        result = analyze(path)
        # verify exits 0 on unknown keys too, only printing them: any output is a finding.
        assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), result.stderr
        service = service_section(unit)
        argv = words(service["ExecStart"][0])
        assert argv[:3] == [sys.executable, "-m", "forgeci_cli"] and argv[-2:] == ["--config", str(config)]
        assert words(service["Environment"][-1]) == ["NOTE=50% of $HOME"]
        assert service["Restart"] == ["on-failure"] and service["User"] == ["root"]


def test_systemd_analyze_catches_what_the_test_relies_on(tmp_path: Path) -> None:
    path = tmp_path / "forgeci.service"
    path.write_text(serve_unit(UnitOptions(executable=(sys.executable,))).replace(
        "Restart=on-failure", "Restart=on-failure\nNoNewPriviledges=yes"))
    assert "Unknown key" in analyze(path).stderr


def test_hardening_kept_and_left_out_is_what_the_readme_lists() -> None:
    unit = serve_unit(UnitOptions(executable=(sys.executable,)))
    service = service_section(unit)
    for option, value in KEPT:
        assert service[option] == [value]
    for option in LEFT_OUT:
        assert option.split("=")[0] not in service or "=" in option, f"{option} must not be in the unit"
    readme = README.read_text()
    section = readme[readme.index("### Running it as a service"):]
    section = section[:section.index("\n## ")]
    for option, _ in KEPT:
        assert f"`{option}=" in section, f"README does not list the kept option {option}"
    for option in LEFT_OUT:
        assert f"`{option}`" in section, f"README does not say why {option} is left out"
    assert "journalctl -u forgeci" in section and "systemctl enable --now forgeci" in section


def test_quoting_round_trips() -> None:
    for word in ("/opt/forge ci/bin/forgeci", 'say "hi"', "back\\slash", "100%", "$HOME", "plain-word_1.2"):
        assert words(quote(word, command=True)) == [word]


def test_service_install_writes_into_dir_and_refuses_an_agent_that_does_not_exist(tmp_path: Path) -> None:
    config = tmp_path / "forgeci.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[runner]\nshutdown_grace = "2m"\n')
    run = [sys.executable, "-m", "forgeci_cli", "--config", str(config), "service", "install", "--dir",
           str(tmp_path / "units")]
    result = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    unit = (tmp_path / "units" / "forgeci.service").read_text()
    service = service_section(unit)
    assert service["TimeoutStopSec"] == ["180s"]  # the grace plus time to requeue and stop Podman
    assert service["WorkingDirectory"] == [f"-{tmp_path / 'data'}"]
    assert f"--config {config}" in service["ExecStart"][0]
    assert "systemctl enable --now forgeci" in result.stdout and "journalctl -u forgeci" in result.stdout
    from forgeci_cli import subcommands

    agent = subprocess.run([*run, "--agent", "--server", "http://ci.example.test"], capture_output=True, text=True,
                           cwd=ROOT, timeout=60)
    if "agent" in subcommands():
        assert agent.returncode == 0 and (tmp_path / "units" / "forgeci-agent.service").exists(), agent.stderr
    else:
        assert agent.returncode == 2 and "no `forgeci agent` command" in agent.stderr


def unit_environment(service: dict[str, list[str]], user: str) -> dict[str, str]:
    """The environment systemd gives the unit's process: its PATH, the user's identity, Environment=, then
    EnvironmentFile= (a leading `-`: optional)."""
    account = pwd.getpwnam(user)
    env = {"PATH": SYSTEMD_PATH, "HOME": account.pw_dir, "USER": user, "LOGNAME": user, "SHELL": account.pw_shell}
    for value in service.get("Environment", []):
        for word in words(value):
            key, _, val = word.partition("=")
            env[key] = val
    for value in service.get("EnvironmentFile", []):
        path = Path(value.lstrip("-"))
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip() and not line.startswith("#"):
                    key, _, val = line.partition("=")
                    env[key.strip()] = val.strip()
        else:
            assert value.startswith("-"), f"{path} is missing and not optional"
    return env


def with_kept_hardening(argv: list[str]) -> list[str]:
    """`argv` in a mount namespace with what the unit's kept options do (systemd cannot run units here)."""
    emulations = {("ProtectSystem", "full"): "for d in /usr /boot /efi /etc; do [ -d $d ] || continue; "
                                             "mount --rbind $d $d && mount -o remount,bind,ro $d || exit 97; done"}
    missing = [kept for kept in KEPT if kept not in emulations]
    assert not missing, f"no emulation of {missing}: add one so this test runs the unit as systemd would"
    script = "; ".join(emulations[kept] for kept in KEPT) + '; exec "$@"'
    return ["unshare", "--mount", "--propagation", "slave", "sh", "-c", script, "sh", *argv]


@pytest.mark.slow
@pytest.mark.podman
def test_serve_started_exactly_as_the_unit_says_answers_healthz(
        tmp_path: Path, shared_dir: Path, busybox_image: str, podman_user: PodmanUser) -> None:
    if os.geteuid() != 0:
        pytest.fail("the unit runs forgeci as root (User=root), and emulating its ProtectSystem= needs a mount "
                    "namespace: run the suite as root, as CI and scripts/setup do")
    port = free_port()
    data = shared_dir / "data"
    config = shared_dir / "forgeci.toml"
    config.write_text(f'data_dir = "{data}"\n[server]\nport = {port}\n'
                      f'[runner]\nimage = "{busybox_image}"\nnetwork = "none"\nshutdown_grace = "5s"\n')
    env_file = shared_dir / "forgeci.env"
    env_file.write_text("# secrets\nFORGECI_API_TOKEN=unit-test-token-0123456789\n")
    env_file.chmod(0o600)
    # PYTHONPATH: the code under test (a worktree, or the checkout the venv was installed from).
    opts = UnitOptions(config=config, data_dir=data, env_file=env_file, executable=(sys.executable, "-m", "forgeci_cli"),
                       environment={"PYTHONPATH": str(ROOT)}, shutdown_grace=5.0)
    unit_path = install_units(opts, tmp_path / "units")[0]
    assert analyze(unit_path).returncode == 0
    service = service_section(unit_path.read_text())
    user = service["User"][0]
    env = unit_environment(service, user)
    argv = words(service["ExecStart"][0])
    if user != pwd.getpwuid(os.geteuid()).pw_name:
        argv = ["runuser", "-u", user, "--", *argv]
    workdir = service["WorkingDirectory"][0].lstrip("-")
    output = tmp_path / "serve.log"
    with open(output, "wb") as out:
        proc = subprocess.Popen(with_kept_hardening(argv), env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=workdir if os.path.isdir(workdir) else "/")
    try:
        def healthy() -> bool:
            assert proc.poll() is None, f"serve exited {proc.returncode}:\n{output.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_for(healthy, 90, "forgeci serve from the unit answering /healthz")
        status, body = http_json("GET", f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and body["engine"] is True and body["status"] == "ok", body
        # The token came from the unit's EnvironmentFile: mutating calls need it, and it works.
        url = f"http://127.0.0.1:{port}/admin/maintenance"
        assert http_json("POST", url, {})[0] == 401
        assert http_json("POST", url, {}, token="unit-test-token-0123456789")[0] == 200
        assert Path(f"/proc/{proc.pid}/status").read_text().count(f"\t{pwd.getpwnam(user).pw_uid}\t") >= 1
    finally:
        proc.send_signal(signal.SIGTERM)  # KillMode=mixed: SIGTERM to the main process alone
        started = time.monotonic()
        code = proc.wait(timeout=float(service["TimeoutStopSec"][0].rstrip("s")))
    assert code == 0, output.read_text()[-3000:]
    assert time.monotonic() - started < 30


def test_the_agent_unit_carries_its_labels_name_and_slots(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    run = [sys.executable, "-m", "forgeci_cli", "--config", str(config), "service", "install", "--dir",
           str(tmp_path / "units"), "--agent", "--server", "https://ci.example.test"]
    result = subprocess.run([*run, "--labels", "linux, big", "--name", "build-01", "--max-concurrent", "2"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    start = service_section((tmp_path / "units" / "forgeci-agent.service").read_text())["ExecStart"][0]
    assert start.endswith("--labels big,linux --name build-01 --max-concurrent 2"), start
    bad = subprocess.run([*run, "--labels", "a b"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "'a b' is not a runner label" in bad.stderr, bad.stderr
    # Several coordinators: each --server goes on the agent's command line, in order.
    two = subprocess.run([*run, "--server", "https://ci-b.example.test"], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert two.returncode == 0, two.stderr
    start = words(service_section((tmp_path / "units" / "forgeci-agent.service").read_text())["ExecStart"][0])
    at = start.index("agent")
    assert start[at:at + 5] == ["agent", "--server", "https://ci.example.test", "--server", "https://ci-b.example.test"]
    wrong = subprocess.run([*run, "--server", "ci-c:8080"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert wrong.returncode == 2 and "got 'ci-c:8080'" in wrong.stderr, wrong.stderr
