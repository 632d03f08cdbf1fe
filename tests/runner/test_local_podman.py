"""`forgeci run` of a diamond pipeline end to end: the real CLI, rootless Podman, the busybox image."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from config.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.podman]

MakeRepo = Callable[..., tuple[Path, str]]
ROOT = Path(__file__).resolve().parents[2]

# /proc/uptime: busybox's date has no sub-second format, and every container shares the host's kernel clock.
NOW = "$(cut -d' ' -f1 /proc/uptime)"
DIAMOND = f'''
[jobs.a]
steps = [{{ name = "make", run = "echo made > a.txt; echo a at {NOW}" }}]
[jobs.b]
needs = ["a"]
steps = [{{ name = "slow", run = "echo b start {NOW}; test ! -e a.txt; sleep 1; echo b end {NOW}; exit $FAIL_B" }}]
env = {{ FAIL_B = "0" }}
[jobs.c]
needs = ["a"]
steps = [{{ name = "slow", run = "echo c start {NOW}; sleep 1; echo c end {NOW}" }}]
[jobs.d]
needs = ["b", "c"]
steps = [{{ name = "last", run = "echo d start {NOW}" }}]
'''


def forgeci_run(settings: Settings, repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = repo.parent / "forgeci.toml"
    config.write_text(f'data_dir = "{settings.data_dir}"\n[queue]\nmax_concurrent = 2\n'
                      f'[runner]\nimage = "{settings.runner.image}"\nnetwork = "none"\n')
    return subprocess.run([sys.executable, "-m", "forgeci_cli", "run", str(repo), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=240,
                          env={"PATH": "/usr/local/bin:/usr/bin:/bin", "FORGECI_CONFIG": str(config)})


def times(out: str) -> dict[str, float]:
    """`b start` -> its uptime, from lines like `[b] [slow] b start 1234.56`."""
    return {f"{job} {what}": float(t) for job, what, t in re.findall(r"^\[\w\] \[\w+\] (\w) (start|end|at) ([\d.]+)$",
                                                                    out, re.M)}


def test_forgeci_run_runs_a_diamond_with_its_middle_in_parallel(settings: Settings, make_repo: MakeRepo,
                                                                 busybox_image: str) -> None:
    repo, _ = make_repo({".forgeci.toml": DIAMOND})
    result = forgeci_run(settings, repo)
    assert result.returncode == 0, result.stdout + result.stderr
    t = times(result.stdout)
    assert set(t) == {"a at", "b start", "b end", "c start", "c end", "d start"}, result.stdout
    assert t["a at"] <= min(t["b start"], t["c start"])
    assert t["b start"] < t["c end"] and t["c start"] < t["b end"]  # b and c ran at the same time
    assert t["d start"] >= max(t["b end"], t["c end"])
    summary = result.stdout[result.stdout.rindex("job / step"):]
    assert [line.split()[:2] for line in summary.splitlines()[1:9]] == [
        ["a", "success"], ["make", "success"], ["b", "success"], ["slow", "success"],
        ["c", "success"], ["slow", "success"], ["d", "success"], ["last", "success"]]
    assert "SUCCESS in " in summary and not (repo / "a.txt").exists()  # jobs ran on copies of the tree


def test_forgeci_run_skips_the_last_job_when_a_middle_one_fails(settings: Settings, make_repo: MakeRepo,
                                                                busybox_image: str) -> None:
    repo, _ = make_repo({".forgeci.toml": DIAMOND.replace('FAIL_B = "0"', 'FAIL_B = "7"')})
    result = forgeci_run(settings, repo, "--parallel", "1")
    assert result.returncode == 1, result.stdout + result.stderr
    t = times(result.stdout)
    assert "d start" not in t and (t["b end"] <= t["c start"] or t["c end"] <= t["b start"])  # one at a time
    assert re.search(r"^d +skipped +- +not run: b ended failure$", result.stdout, re.M), result.stdout
    assert "FAILURE in " in result.stdout and "4 jobs; b failure" in result.stdout
