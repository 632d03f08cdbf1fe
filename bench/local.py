"""`forgeci run` of a one-step `echo` pipeline against bare `podman run --rm IMAGE echo` as the Podman user,
interleaved in one run, cold (no Podman service running) and warm (the shared service up): `python bench/local.py`.

Goals: warm <= bare + 300 ms, cold <= bare + 1.5 s. The phase timings (`forgeci run --timings`) of the median
warm and cold runs are printed too.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository root; bench/queue.py shadows queue

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from runner.podman_shared import SharedPodmanService  # noqa: E402
from runner.podman_user import PodmanUser  # noqa: E402

IMAGE = "localhost/forgeci-job:latest"
ROOT = Path(__file__).resolve().parent.parent
WARM_GOAL, COLD_GOAL = 0.3, 1.5


def git(path: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b"}
    subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True, env=env)


def forgeci_run(config: Path, project: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "forgeci_cli.py"), "--config", str(config), "run",
                           str(project), "--timings"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    took = time.perf_counter() - start
    if done.returncode != 0 or "hello" not in done.stdout:
        raise SystemExit(f"forgeci run failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return took, done.stdout[done.stdout.index("timings"):]


def bare(user: PodmanUser) -> float:
    start = time.perf_counter()
    done = user.run(["podman", "run", "--rm", IMAGE, "echo", "hello"], check=False)
    took = time.perf_counter() - start
    if done.returncode != 0 or b"hello" not in done.stdout:
        raise SystemExit(f"podman run failed: {done.stderr.decode()}")
    return took


def median_run(runs: list[tuple[float, str]]) -> tuple[float, str]:
    ordered = sorted(runs)
    return ordered[len(ordered) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    user = PodmanUser.resolve("forgeci")
    root = Path(tempfile.mkdtemp(prefix="forgeci-bench-local-", dir="/var/tmp"))
    root.chmod(0o755)
    # A service folder of the bench's own: stopping it for the cold runs never disturbs anyone else's runs.
    service = SharedPodmanService(user, root / "service", 600.0)
    try:
        project = root / "project"
        project.mkdir()
        (project / ".forgeci.toml").write_text('[[steps]]\nname = "hello"\nrun = "echo hello"\n')
        git(project, "init", "-q", "-b", "main")
        git(project, "add", "-A")
        git(project, "commit", "-qm", "bench")
        config = root / "forgeci.toml"
        config.write_text(f'data_dir = "{root / "data"}"\n[runner]\nimage = "{IMAGE}"\nnetwork = "none"\n'
                          f'podman_service_dir = "{root / "service"}"\n')
        bare(user)  # warm the image's layers in the page cache
        forgeci_run(config, project)
        cold: list[tuple[float, str]] = []
        warm: list[tuple[float, str]] = []
        bares: list[float] = []
        for _ in range(args.rounds):
            service.shutdown()
            cold.append(forgeci_run(config, project))
            bares.append(bare(user))
            warm.append(forgeci_run(config, project))
            bares.append(bare(user))
        base = statistics.median(bares)
        cold_s, cold_phases = median_run(cold)
        warm_s, warm_phases = median_run(warm)
        print(f"forgeci run of a one-step echo pipeline vs podman run --rm {IMAGE} echo hello, as {user.name}; "
              f"{args.rounds} interleaved rounds, medians; load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} cores")
        print(f"  bare podman run --rm        {base * 1000:7.0f} ms")
        for name, took, goal in (("warm (service running)", warm_s, WARM_GOAL), ("cold (no service)", cold_s, COLD_GOAL)):
            extra = took - base
            print(f"  forgeci run, {name:<15} {took * 1000:7.0f} ms   bare {extra * 1000:+6.0f} ms   "
                  f"goal <= bare + {goal * 1000:.0f} ms: {'met' if extra <= goal else 'MISSED'}")
        print(f"\nwarm run, {warm_phases}\ncold run, {cold_phases}")
    finally:
        service.shutdown()
        user.run(["podman", "unshare", "rm", "-rf", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
