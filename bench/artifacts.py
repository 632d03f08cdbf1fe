"""Benchmark of artifact upload and download against tar | zstd plus the store's put and get, in the same run:
`python bench/artifacts.py` (300 MB in 5,000 files by default)."""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository root: `runner` without installing

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager, suppress  # noqa: E402

from config.pipeline import pipeline_from_dict  # noqa: E402
from config.settings import Settings  # noqa: E402
from runner.artifacts import ArtifactManager  # noqa: E402
from runner.errors import RunnerError  # noqa: E402
from runner.models import Job, JobSpec, JobState  # noqa: E402
from runner.podman_user import PodmanUser  # noqa: E402
from runner.queue import PlannedJobRow, Queue  # noqa: E402
from runner.store import FileStore, ObjectStore, S3Location, S3Store  # noqa: E402

GOAL = 1.3  # upload and download, each, at most this times tar | zstd + put / get + zstd -d | tar
BUILD = {"name": "build", "artifacts": {"paths": ["dist/*", "reports/**"]}, "steps": [{"run": "make"}]}
PUBLISH = {"name": "publish", "steps": [{"run": "publish"}]}
WORDS = ("test case passed failed skipped duration assert expected actual module function line coverage branch "
         "statement report suite class method error warning info debug trace").split()


def make_tree(root: Path, total_mb: int, files: int, seed: int = 1) -> tuple[int, int]:
    """A build's output: 40 incompressible packages in dist/ (a third of the bytes: wheels and tarballs are
    compressed already), and lognormal-sized text reports (HTML, XML, coverage) in folders below reports/."""
    rng = random.Random(seed)
    packages = 40
    binary_total = (total_mb << 20) // 3
    for i in range(packages):
        path = root / "dist" / f"pkg{i}-1.0-py3-none-any.whl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(binary_total // packages))
    lines, size = [], 0
    while size < 48 << 20:  # more text than zstd's window: files do not simply repeat each other
        line = " ".join(rng.choices(WORDS, k=rng.randint(4, 14))) + f" {rng.randint(0, 10**6)}\n"
        lines.append(line)
        size += len(line)
    text = "".join(lines).encode()
    count = files - packages
    sizes = [rng.lognormvariate(9.0, 1.2) for _ in range(count)]
    scale = ((total_mb << 20) - binary_total) / sum(sizes)
    written = binary_total
    for i, raw in enumerate(sizes):
        n = min(len(text) - 1, max(16, int(raw * scale)))
        offset = rng.randrange(0, len(text) - n)
        folder = root / "reports" / f"suite{i % 50}" / ("html" if i % 3 else "xml")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"case{i}.{'html' if i % 3 else 'xml'}").write_bytes(text[offset:offset + n])
        written += n
    return files, written


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def shell(command: str) -> None:
    subprocess.run(["sh", "-c", command], check=True)


def podman_user() -> PodmanUser:
    """The real Podman user when it exists (restored files are chowned to it, as in a job), else ourselves."""
    try:
        return PodmanUser.resolve(Settings.default().runner.podman_user)
    except RunnerError:
        return PodmanUser("self", os.getuid(), os.getgid(), "/", "/tmp", switch=False)


class Pipeline:
    """A fresh queue with a planned build -> publish pipeline; its build job claimed, as when its steps ended."""

    def __init__(self, folder: Path, store: ObjectStore, user: PodmanUser) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.queue = Queue(folder / "queue.db")
        self.manager = ArtifactManager(store, self.queue, user, max_size=1 << 40, default_days=7)
        spec = JobSpec(repo="https://git.example.test/acme/app.git", ref="main", sha="a" * 40)
        pipeline_id = self.queue.create_pipeline(spec)
        rows = [PlannedJobRow(spec=dataclasses.replace(spec, pipeline=BUILD), name="build", display="build"),
                PlannedJobRow(spec=dataclasses.replace(spec, pipeline=PUBLISH), name="publish", display="publish",
                              needs=("build",))]
        self.queue.write_plan(pipeline_id, spec.sha, rows)
        build = self.queue.claim("bench", 3600)
        assert build is not None
        self.build = build

    def upload(self, workspace: Path) -> None:
        if self.manager.upload(self.build, pipeline_from_dict(BUILD, "bench"), workspace, JobState.success,
                               lambda _: None) is None:
            raise SystemExit("the upload failed")

    def finish_build(self) -> Job:
        """Complete the build and claim its dependant (the job whose restores are measured)."""
        self.queue.complete(self.build.id, JobState.success, runner_id="bench")
        publish = self.queue.claim("bench", 3600)
        assert publish is not None
        return publish

    def download(self, publish: Job, target: Path) -> None:
        said: list[str] = []
        outcome = self.manager.restore(publish, pipeline_from_dict(PUBLISH, "bench"), target, said.append)
        if outcome is not None:
            raise SystemExit(f"the download failed: {outcome.error}")


@dataclasses.dataclass(frozen=True)
class Pair:
    ours: float
    base: float
    ratio: float  # the median of the per-round ratios
    ratios: tuple[float, ...]


def measure(rounds: int, ours: Callable[[], float], base: Callable[[], float]) -> Pair:
    """Alternating rounds, each side after a sync; the ratio is taken within each round (the machine is shared,
    its disk slows down in bursts longer than a round), the median of those is the figure."""
    a, b = [], []
    for _ in range(rounds):
        os.sync()
        b.append(base())
        os.sync()
        a.append(ours())
    ratios = tuple(x / y for x, y in zip(a, b, strict=True))
    return Pair(min(a), min(b), statistics.median(ratios), ratios)


@contextmanager
def moto() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            with suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
                break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def bench_store(name: str, store: ObjectStore, tree: Path, work: Path, rounds: int, mb: float) -> list[bool]:
    """Upload and download on one store, each against its baseline; the two table rows, and whether goals held."""
    user = podman_user()
    count = iter(range(10**6))

    def fresh(kind: str) -> Path:
        path = work / f"{name}-{kind}-{next(count)}"
        path.mkdir(parents=True)
        return path

    def ours_up() -> float:
        pipeline = Pipeline(fresh("queue"), store, user)
        return timed(lambda: pipeline.upload(tree))

    def base_up() -> float:
        out = fresh("base-up") / "artifact.tar.zst"

        def work_() -> None:
            shell(f"tar -cf - -C {tree} dist reports | zstd -q -T0 -3 > {out}")
            store.put_file(f"bench/{out.parent.name}.tar.zst", out)
        return timed(work_)

    up = measure(rounds, ours_up, base_up)
    pipeline = Pipeline(fresh("queue"), store, user)
    pipeline.upload(tree)
    publish = pipeline.finish_build()
    record = pipeline.queue.artifacts_of(job_id=pipeline.build.id, files=False)[0]
    key = record.object
    assert key is not None

    def ours_down() -> float:
        return timed(lambda: pipeline.download(publish, fresh("down")))

    def base_down() -> float:
        folder = fresh("base-down")

        def work_() -> None:
            store.get_file(key, folder / "artifact.tar.zst")  # the very archive forgeci downloads
            (folder / "out").mkdir()
            shell(f"zstd -dc {folder / 'artifact.tar.zst'} | tar -xf - -C {folder / 'out'}")
        return timed(work_)

    down = measure(rounds, ours_down, base_down)
    results = []
    for what, pair, base_text in (("upload", up, "tar | zstd -T0 -3 > FILE; put"),
                                  ("download", down, "get; zstd -dc FILE | tar -x")):
        ok = pair.ratio <= GOAL
        results.append(ok)
        print(f"{name:<6} {what:<9} {pair.ours:>7.2f}s {pair.base:>8.2f}s {pair.ratio:>6.2f}x   <= {GOAL}x "
              f"{'met' if ok else 'NOT met'}   ({mb / pair.ours:,.0f} vs {mb / pair.base:,.0f} MB/s of files; "
              f"baseline {base_text}; rounds {' '.join(f'{r:.2f}' for r in pair.ratios)})")
    print(f"{'':<6} archive {record.size / 1e6:.1f} MB for {record.file_count:,} files, index of "
          f"{record.file_count:,} sha256 sums written with it")
    pipeline.queue.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=300, help="size of the artifact (default 300)")
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 (moto) part")
    parser.add_argument("--dir", default="/var/tmp", help="where the scratch trees go (needs ~5 GB)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="forgeci-bench-artifacts-", dir=args.dir))
    try:
        tree = work / "workspace"
        started = time.perf_counter()
        files, size = make_tree(tree, args.mb, args.files)
        mb = size / 1e6
        print(f"forgeci artifact benchmark: {files:,} files, {mb:,.1f} MB (a third incompressible packages, the rest "
              f"text reports), generated in {time.perf_counter() - started:.1f}s; {os.cpu_count()} cores; "
              f"{args.rounds} alternating rounds: best times, median of the per-round ratios")
        print("forgeci upload = ArtifactManager.upload: globs, GNU tar, in-process zstd -3, a sha256 per file and of "
              "the archive, the store, the index (a row per file); download = .restore: the store, the checked "
              "extractor, chown to the Podman user, moved into the workspace\n")
        print(f"{'store':<6} {'':<9} {'forgeci':>8} {'baseline':>9} {'ratio':>7}   goal")
        results = bench_store("file", FileStore(work / "store"), tree, work, args.rounds, mb)
        if not args.no_s3:
            with moto() as endpoint:
                s3 = S3Store(S3Location.parse(f"s3://bench?endpoint={endpoint}"), "bench", "bench")
                results += bench_store("s3", s3, tree, work, args.rounds, mb)
                s3.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ngoals: {'all met' if all(results) else 'NOT all met'}")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
