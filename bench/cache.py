"""Benchmark of cache save and restore against tar | zstd run in the same process run: `python bench/cache.py`.

Also: a job of two cache entries where one key file changed against one combined entry that misses (restore +
save time, goal <= GOAL_ENTRIES), and two entries restored in parallel against one after the other."""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository root: `runner` without installing

import argparse  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager, suppress  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from config.pipeline import pipeline_from_dict  # noqa: E402
from config.settings import Settings  # noqa: E402
from runner.archive import Compressor  # noqa: E402
from runner.cache import CacheManager, CachePlan, plan_cache, plan_caches  # noqa: E402
from runner.errors import RunnerError  # noqa: E402
from runner.models import JobSpec  # noqa: E402
from runner.podman_user import PodmanUser  # noqa: E402
from runner.queue import Queue  # noqa: E402
from runner.store import FileStore, ObjectStore, S3Location, S3Store  # noqa: E402

GOAL_LOCAL = 1.3  # forgeci's save and restore time, each, at most this times tar | zstd's
GOAL_S3 = 0.8  # forgeci's S3 restore throughput at least this times fget_object + zstd -d | tar -x
GOAL_MEMORY_MB = 256  # peak RSS of a process saving a 2 GB tree
GOAL_ENTRIES = 0.6  # two entries, one key changed: restore + save at most this times one combined entry's miss
IMAGE = "localhost/forgeci-job:latest"
PIPELINE = pipeline_from_dict({"cache": {"paths": ["node_modules"], "key_files": ["package-lock.json"]},
                               "steps": [{"run": "npm ci"}]}, "bench")

WORDS = ("function return const let var if else for while module exports require import from default class "
         "extends this null undefined true false new typeof instanceof async await yield prototype object string "
         "number length push map filter reduce forEach keys values Promise resolve reject error options config "
         "value index result callback emit listener handler buffer stream").split()


# -- the tree -----------------------------------------------------------------------------------------------


def make_tree(root: Path, total_mb: int, files: int, seed: int = 1) -> tuple[int, int, int, int]:
    """A node_modules-shaped tree: packages (some scoped) of lognormal-sized JS text (compressible about 4x, never
    repeated within zstd's window), a few incompressible native addons, package.json files, relative .bin links.
    Returns (files, bytes, symlinks, dirs)."""
    rng = random.Random(seed)
    words = []
    size = 0
    while size < 48 << 20:  # text to slice files from; larger than zstd's window, so files do not repeat each other
        line = " ".join(rng.choices(WORDS, k=rng.randint(3, 12))).replace("value", f"value{rng.randint(0, 999)}")
        line += rng.choice((";\n", " {\n", "}\n", ",\n"))
        words.append(line)
        size += len(line)
    text = "".join(words).encode()
    binary = os.urandom(8 << 20)
    sizes = [max(64, int(rng.lognormvariate(8.3, 1.6))) for _ in range(files)]
    scale = (total_mb << 20) / sum(sizes)
    sizes = [max(16, int(s * scale)) for s in sizes]
    modules = root / "node_modules"
    counts = {"files": 0, "bytes": 0, "links": 0}
    dirs: set[Path] = set()
    index = package = 0
    while index < files:
        package += 1
        name = f"pkg{package}"
        base = modules / (f"@scope{package % 40}/{name}" if package % 5 == 0 else name)
        for j in range(rng.randint(3, 60)):
            if index >= files:
                break
            folder = base / rng.choice(("", "lib", "dist", "src/util", "lib/internal", "types"))
            if folder not in dirs:
                folder.mkdir(parents=True, exist_ok=True)
                dirs.add(folder)
            size = min(sizes[index], len(text) - 1)
            index += 1
            source, suffix = (binary, "node") if rng.random() < 0.06 else (text, "js")
            size = min(size, len(source) - 1)
            offset = rng.randrange(0, len(source) - size)
            (folder / f"f{j}.{suffix}").write_bytes(source[offset:offset + size])
            counts["files"] += 1
            counts["bytes"] += size
        base.mkdir(parents=True, exist_ok=True)
        (base / "package.json").write_text(f'{{"name": "{name}", "version": "1.0.{package}"}}\n')
        counts["files"] += 1
        if package % 8 == 0:
            bin_dir = modules / ".bin"
            bin_dir.mkdir(parents=True, exist_ok=True)
            (bin_dir / name).symlink_to(os.path.relpath(base / "package.json", bin_dir))
            counts["links"] += 1
    (root / "package-lock.json").write_text('{"lockfileVersion": 3}\n')
    ndirs = sum(1 for _ in modules.rglob("*") if _.is_dir() and not _.is_symlink())
    return counts["files"], counts["bytes"], counts["links"], ndirs


# -- measuring ---------------------------------------------------------------------------------------------


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def shell(command: str) -> None:
    subprocess.run(["sh", "-c", command], check=True)


def podman_user() -> PodmanUser:
    """The real Podman user when it exists (extracted files are chowned to it, as in a job), else ourselves."""
    try:
        return PodmanUser.resolve(Settings.default().runner.podman_user)
    except RunnerError:
        return PodmanUser("self", os.getuid(), os.getgid(), "/", "/tmp", switch=False)


def plan(tree: Path) -> CachePlan:
    found = plan_cache(JobSpec(repo="https://git.example.test/acme/app.git", ref="main"), PIPELINE, tree, IMAGE)
    assert found is not None
    return found


class Scratch:
    """Fresh folders for each run; deleted at the end, not between runs (deleting a large tree on this kind of
    ext4-with-discard disk slows the next writes several-fold, and would be measured)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0

    def new(self, name: str) -> Path:
        self.count += 1
        path = self.root / f"{name}-{self.count}"
        path.mkdir(parents=True)
        return path


def save_once(tree: Path, store: ObjectStore, work: Path, user: PodmanUser, compressor: Compressor) -> None:
    """One real save: CacheManager into the store, with a fresh index (an existing key is never saved again)."""
    with Queue(work / "index.db") as queue:
        if CacheManager(store, queue, user, compressor=compressor).save(plan(tree), tree, lambda _: None) is None:
            raise SystemExit("the save failed")


def restore_once(store: ObjectStore, index: Path, target: Path, tree: Path, user: PodmanUser) -> None:
    (target / "package-lock.json").write_text((tree / "package-lock.json").read_text())
    with Queue(index) as queue:
        result = CacheManager(store, queue, user).restore(plan(target), target, lambda _: None)
    if result.outcome != "hit":
        raise SystemExit(f"the restore was a {result.outcome}")


@dataclass(frozen=True)
class Pair:
    """One measurement: the best time of each side, and the median of the per-round ratios (forgeci / baseline)."""

    ours: float
    base: float
    ratio: float
    ratios: tuple[float, ...]


def measure(rounds: int, ours: Callable[[], float], base: Callable[[], float]) -> Pair:
    """Alternating rounds, each side after a sync (the previous run's dirty pages must not be written back during
    the next one). The machine is shared and its disk throttled in bursts that last longer than a round, so the
    ratio is taken within each round, back to back, and the median of those is the figure."""
    a, b = [], []
    for _ in range(rounds):
        os.sync()
        b.append(base())
        os.sync()
        a.append(ours())
    ratios = tuple(x / y for x, y in zip(a, b))
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


def peak_memory_of_a_save(work: Path, mb: int) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of a separate process saving a `mb`-MB tree into a local store."""
    tree = work / "big-tree"
    make_tree(tree, mb, max(20_000, mb * 70), seed=2)
    result = subprocess.run([sys.executable, __file__, "--save-child", str(tree), str(work / "big-store")],
                            check=True, capture_output=True, text=True)
    peak, seconds = result.stdout.split()
    shutil.rmtree(tree, ignore_errors=True)
    shutil.rmtree(work / "big-store", ignore_errors=True)
    return float(peak), float(seconds)


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over an exec, so a child
    of a large parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_child(tree: Path, store_dir: Path) -> None:
    """The --save-child process: one save, then its own peak RSS (MB) and time on stdout."""
    started = time.perf_counter()
    save_once(tree, FileStore(store_dir), store_dir.parent, podman_user(), "zstandard")
    took = time.perf_counter() - started
    print(peak_rss_mb(), took)


# -- several entries ----------------------------------------------------------------------------------------

SPEC = JobSpec(repo="https://git.example.test/acme/app.git", ref="main")
TWO_ENTRIES = pipeline_from_dict({"cache": [
    {"name": "node", "paths": ["node_modules"], "key_files": ["package-lock.json"]},
    {"name": "pip", "paths": [".venv"], "key_files": ["requirements.txt"], "restore_keys": False}],
    "steps": [{"run": "install"}]}, "bench")
COMBINED = pipeline_from_dict({"cache": {"paths": ["node_modules", ".venv"],
                                         "key_files": ["package-lock.json", "requirements.txt"]},
                               "steps": [{"run": "install"}]}, "bench")


def monorepo(root: Path, mb: int, files: int) -> None:
    """A front end's node_modules and a back end's .venv of `mb` MB each, with their lockfiles."""
    make_tree(root, mb, files, seed=3)
    venv = root / "venv-src"
    make_tree(venv, mb, files, seed=4)
    (venv / "node_modules").rename(root / ".venv")
    shutil.rmtree(venv)
    (root / "requirements.txt").write_text("django==5.0\n")


class EntriesRun:
    """Jobs on a copy of one prepared index (both layouts' entries saved for the old requirements.txt), each in a
    fresh workspace whose requirements.txt changed: what the cache does before and after the job's steps."""

    def __init__(self, work: Path, tree: Path, store: ObjectStore, user: PodmanUser) -> None:
        self.work, self.tree, self.store, self.user = work, tree, store, user
        self.index = work / "entries-index.db"
        with Queue(self.index) as queue:
            manager = CacheManager(store, queue, user)
            for pipeline in (TWO_ENTRIES, COMBINED):
                for saved in manager.save_all(plan_caches(SPEC, pipeline, tree, IMAGE), tree, lambda _: None):
                    if saved is None:
                        raise SystemExit("the entries' save failed")
        self.count = 0

    def _fresh(self) -> tuple[Path, Path]:
        self.count += 1
        index = self.work / f"entries-{self.count}.db"
        shutil.copyfile(self.index, index)
        ws = self.work / f"entries-ws-{self.count}"
        ws.mkdir()
        (ws / "package-lock.json").write_text((self.tree / "package-lock.json").read_text())
        (ws / "requirements.txt").write_text("django==5.1\n")  # the back end's dependencies changed
        return index, ws

    def job(self, pipeline: object, expect: list[str], parallel: int = 4) -> float:
        """Seconds of the restore and the save of one job (the steps' work in between is not timed)."""
        index, ws = self._fresh()
        with Queue(index) as queue:
            manager = CacheManager(self.store, queue, self.user, parallel=parallel)
            plans = plan_caches(SPEC, pipeline, ws, IMAGE)  # type: ignore[arg-type]
            started = time.perf_counter()
            found = [r.outcome for r in manager.restore_all(plans, ws, lambda _: None)]
            restore = time.perf_counter() - started
            if found != expect:
                raise SystemExit(f"expected {expect}, the restore was {found}")
            if not (ws / ".venv").exists():  # the install step rebuilds what missed
                shutil.copytree(self.tree / ".venv", ws / ".venv", symlinks=True)
            os.sync()
            started = time.perf_counter()
            manager.save_all(plans, ws, lambda _: None)
            return restore + time.perf_counter() - started

    def restores(self, parallel: int) -> float:
        """Seconds to restore both entries, both exact hits (requirements.txt as saved)."""
        index, ws = self._fresh()
        (ws / "requirements.txt").write_text((self.tree / "requirements.txt").read_text())
        with Queue(index) as queue:
            manager = CacheManager(self.store, queue, self.user, parallel=parallel)
            plans = plan_caches(SPEC, TWO_ENTRIES, ws, IMAGE)
            started = time.perf_counter()
            found = [r.outcome for r in manager.restore_all(plans, ws, lambda _: None)]
            took = time.perf_counter() - started
        if found != ["hit", "hit"]:
            raise SystemExit(f"expected two hits, got {found}")
        return took


def entries_bench(work: Path, mb: int, files: int, rounds: int, user: PodmanUser) -> bool:
    """Two entries with one key changed against one combined entry that misses; parallel against serial restores."""
    tree = work / "monorepo"
    monorepo(tree, mb, files)
    run = EntriesRun(work, tree, FileStore(work / "entries-store"), user)
    print(f"\nseveral entries: node_modules and .venv of {mb} MB each; requirements.txt changed")
    print(f"{'local store':<36} {'entries':>8} {'combined':>9} {'ratio':>7}   goal")
    pair = measure(rounds, lambda: run.job(TWO_ENTRIES, ["hit", "miss"]),
                   lambda: run.job(COMBINED, ["fallback"]))
    ok = pair.ratio <= GOAL_ENTRIES
    print(f"{'two entries vs one combined, miss':<36} {pair.ours:>7.2f}s {pair.base:>8.2f}s {pair.ratio:>6.2f}x   "
          f"<= {GOAL_ENTRIES}x {'met' if ok else 'NOT met'} (restore + save: node hit, pip missed and saved; "
          f"combined: the fallback restored, all saved again; rounds {' '.join(f'{r:.2f}' for r in pair.ratios)})")
    parallel = measure(rounds, lambda: run.restores(4), lambda: run.restores(1))
    verdict = "faster" if parallel.ratio < 1 else "not faster"
    print(f"{'restore 2 hits: parallel vs serial':<36} {parallel.ours:>7.2f}s {parallel.base:>8.2f}s "
          f"{parallel.ratio:>6.2f}x   (parallel is {verdict} here; rounds "
          f"{' '.join(f'{r:.2f}' for r in parallel.ratios)})")
    return ok


# -- main ---------------------------------------------------------------------------------------------------


# -- job start with an already-built repository image (issue 21) ---------------------------------------------

GOAL_IMAGE_START_MS = 100.0  # a job on an already-built repository image starts at most this much later


def image_start_bench(rounds: int, base: str, folder: str) -> bool:
    """Job start (its first log line to its first step's) with `image = { containerfile = ... }` already built,
    versus the plain image `base` it is built FROM; alternating rounds through a real runtime."""
    import asyncio
    import dataclasses

    from runner.logs import read_log
    from runner.runtime import open_runtime

    work = Path(tempfile.mkdtemp(prefix="forgeci-bench-image-", dir=folder))
    work.chmod(0o755)
    repo = work / "repo"
    repo.mkdir()
    token = os.urandom(6).hex()
    (repo / "Containerfile").write_text(f"FROM {base}\nRUN echo {token} > /etc/forgeci-bench\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@e", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@e"}
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(["git", "-C", str(repo), *argv], check=True, env=env, capture_output=True)
    for path in [repo, *repo.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o055)
    settings = Settings.default()
    settings = dataclasses.replace(settings, data_dir=work / "data", runner=dataclasses.replace(
        settings.runner, image=base, network="none"))
    steps = [{"name": "first", "run": "true"}]
    plain = {"steps": steps}
    built = {"image": {"containerfile": "Containerfile"}, "steps": steps}

    async def start_of(rt: object, pipeline: dict[str, object]) -> float:
        job_id = rt.queue.enqueue(JobSpec(repo=str(repo), ref="main", pipeline=pipeline))  # type: ignore[attr-defined]
        rt.pool.wake()  # type: ignore[attr-defined]
        while not rt.queue.get(job_id).state.is_terminal:  # type: ignore[attr-defined]
            await asyncio.sleep(0.02)
        lines = list(read_log(rt.layout.log_file(job_id)))  # type: ignore[attr-defined]
        step = next(line for line in lines if line.text.startswith("step 1/1"))
        return step.t - lines[0].t

    async def run() -> tuple[list[float], list[float], str]:
        async with open_runtime(settings, {}) as rt:
            await start_of(rt, built)  # the build itself, and a warm-up of both paths
            await start_of(rt, plain)
            ours, base_times = [], []
            for _ in range(rounds):
                ours.append(await start_of(rt, built))
                base_times.append(await start_of(rt, plain))
            tags = [line.read_text().split("\n")[0] for line in rt.images.state_dir.iterdir()]
            return ours, base_times, tags[0] if tags else ""

    user = podman_user()
    try:
        ours, base_times, tag = asyncio.run(run())
    finally:
        for marker in (work / "data" / "images").glob("*"):
            subprocess.run(user.command(["podman", "rmi", "-f", marker.read_text().split("\n")[0]]), check=False,
                           capture_output=True)
        subprocess.run(user.command(["podman", "unshare", "rm", "-rf", str(work / "data" / "workspaces")]),
                       check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    extra = [(o - b) * 1000 for o, b in zip(ours, base_times, strict=True)]
    delta = statistics.median(ours) * 1000 - statistics.median(base_times) * 1000
    ok = delta <= GOAL_IMAGE_START_MS
    print(f"\njob start (first log line to step 1), {rounds} alternating rounds, medians:")
    print(f"  plain image {base}: {statistics.median(base_times) * 1000:.0f} ms; built repository image {tag}: "
          f"{statistics.median(ours) * 1000:.0f} ms")
    print(f"  difference {delta:+.0f} ms (goal <= +{GOAL_IMAGE_START_MS:.0f} ms: {'met' if ok else 'NOT met'}; "
          f"per round {' '.join(f'{e:+.0f}' for e in extra)})")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=320, help="size of the node_modules-like tree (default 320)")
    parser.add_argument("--files", type=int, default=24_000)
    parser.add_argument("--rounds", type=int, default=5, help="runs per measurement; the best is reported")
    parser.add_argument("--big-mb", type=int, default=2048, help="tree size for the peak-memory run; 0 skips it")
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 (moto) part")
    parser.add_argument("--dir", default="/var/tmp", help="where the scratch trees go (needs ~6 GB)")
    parser.add_argument("--entries-mb", type=int, default=120,
                        help="size of each of the two entries in the several-entries part (default 120); 0 skips it")
    parser.add_argument("--only-entries", action="store_true", help="run only the several-entries part")
    parser.add_argument("--save-child", nargs=2, metavar=("TREE", "STORE"), help=argparse.SUPPRESS)
    parser.add_argument("--image-rounds", type=int, default=10,
                        help="rounds of the job-start-with-a-built-image part; 0 skips it")
    parser.add_argument("--image-base", default=IMAGE, help="the plain image, and FROM of the built one")
    parser.add_argument("--only-image", action="store_true", help="run only the built-image job-start part")
    args = parser.parse_args()
    if args.only_image:
        ok = image_start_bench(args.image_rounds, args.image_base, args.dir)
        print(f"\ngoals: {'all met' if ok else 'NOT all met'}")
        return 0 if ok else 1
    if args.save_child:
        save_child(Path(args.save_child[0]), Path(args.save_child[1]))
        return 0

    work = Path(tempfile.mkdtemp(prefix="forgeci-bench-cache-", dir=args.dir))
    user = podman_user()
    results: list[bool] = []
    if args.only_entries:
        try:
            met = entries_bench(work, args.entries_mb, args.files // 2, args.rounds, user)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return 0 if met else 1
    try:
        tree = work / "tree"
        started = time.perf_counter()
        files, size, links, dirs = make_tree(tree, args.mb, args.files)
        mb = size / 1e6
        print(f"forgeci cache benchmark: a node_modules-like tree of {files:,} files ({mb:,.1f} MB, {links} symlinks, "
              f"{dirs:,} folders), generated in {time.perf_counter() - started:.1f}s; {os.cpu_count()} cores; "
              f"{args.rounds} alternating rounds: best times, median of the per-round ratios")
        print("forgeci = CacheManager.save / .restore (GNU tar, zstd level 3 multi-threaded, sha256, fsync'ed local "
              "store; restore: our checked extractor, chown to the Podman user)\n")
        scratch = Scratch(work)
        store = FileStore(work / "store")
        print(f"{'local store':<36} {'forgeci':>8} {'baseline':>9} {'ratio':>7}   goal")

        def report(what: str, pair: Pair, goal: str, note: str) -> None:
            rounds = " ".join(f"{r:.2f}" for r in pair.ratios)
            print(f"{what:<36} {pair.ours:>7.2f}s {pair.base:>8.2f}s {pair.ratio:>6.2f}x   {goal}   "
                  f"({note}; rounds {rounds})".replace("    (", " ("))

        def ours_save(compressor: Compressor) -> Callable[[], float]:
            return lambda: timed(lambda: save_once(tree, store, scratch.new("save"), user, compressor))

        def base_save() -> float:
            out = scratch.new("base-save") / "cache.tar.zst"
            return timed(lambda: shell(f"tar -cf - -C {tree} node_modules | zstd -q -T0 -3 > {out}"))

        save = measure(args.rounds, ours_save("zstandard"), base_save)
        cli = measure(args.rounds, ours_save("zstd"), base_save)
        ok = save.ratio <= GOAL_LOCAL
        results.append(ok)
        report("save (tar | zstd -T0 -3 > FILE)", save, f"<= {GOAL_LOCAL}x {'met' if ok else 'NOT met'}",
               f"{mb / save.ours:,.0f} vs {mb / save.base:,.0f} MB/s of files")
        faster = "faster" if save.ratio <= cli.ratio else "slower"
        report("  compressor: zstd CLI instead", cli, "", f"in-process zstandard, the default, is {faster} here")

        index = scratch.new("index") / "index.db"
        save_once(tree, store, index.parent, user, "zstandard")  # the entry the restores read
        archive = next(o for o in store.list("caches/"))
        restore = measure(
            args.rounds,
            lambda: timed(lambda: restore_once(store, index, scratch.new("restore"), tree, user)),
            lambda: timed(lambda: shell(f"zstd -dc {store.root / archive.key} | tar -xf - -C {scratch.new('base')}")))
        ok = restore.ratio <= GOAL_LOCAL
        results.append(ok)
        report("restore (zstd -dc FILE | tar -xf -)", restore, f"<= {GOAL_LOCAL}x {'met' if ok else 'NOT met'}",
               f"{mb / restore.ours:,.0f} vs {mb / restore.base:,.0f} MB/s; archive {archive.size / 1e6:.1f} MB")

        if not args.no_s3:
            with moto() as endpoint:
                s3 = S3Store(S3Location.parse(f"s3://bench?endpoint={endpoint}"), "bench", "bench")
                s3_index = scratch.new("s3-index") / "index.db"
                save_once(tree, s3, s3_index.parent, user, "zstandard")
                obj = next(o for o in s3.list("caches/"))

                def base_s3() -> float:
                    def work_() -> None:
                        folder = scratch.new("s3-base")
                        s3.client.fget_object("bench", obj.key, str(folder / "cache.tar.zst"))
                        (folder / "out").mkdir()
                        shell(f"zstd -dc {folder / 'cache.tar.zst'} | tar -xf - -C {folder / 'out'}")
                    return timed(work_)

                s3_pair = measure(
                    args.rounds, lambda: timed(lambda: restore_once(s3, s3_index, scratch.new("s3"), tree, user)),
                    base_s3)
                throughput = 1 / s3_pair.ratio  # the same bytes: throughput ratio is the inverse of the time ratio
                ok = throughput >= GOAL_S3
                results.append(ok)
                print(f"\n{'S3 store (moto, local)':<36} {'forgeci':>8} {'baseline':>9} {'thru':>7}   goal")
                print(f"{'restore (fget_object, zstd | tar)':<36} {s3_pair.ours:>7.2f}s {s3_pair.base:>8.2f}s "
                      f"{throughput:>6.2f}x   >= {GOAL_S3}x {'met' if ok else 'NOT met'}   "
                      f"({obj.size / 1e6 / s3_pair.ours:,.0f} vs {obj.size / 1e6 / s3_pair.base:,.0f} MB/s of archive; "
                      f"rounds {' '.join(f'{1 / r:.2f}' for r in s3_pair.ratios)})")
                s3.close()

        if args.big_mb:
            peak, seconds = peak_memory_of_a_save(work, args.big_mb)
            ok = peak < GOAL_MEMORY_MB
            results.append(ok)
            print(f"\npeak memory of a process saving a {args.big_mb / 1024:.1f} GB tree: {peak:.0f} MB "
                  f"(goal < {GOAL_MEMORY_MB} MB: {'met' if ok else 'NOT met'}; {args.big_mb / seconds:,.0f} MB/s)")
        if args.entries_mb:
            results.append(entries_bench(work, args.entries_mb, args.files // 2, args.rounds, user))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.image_rounds:
        results.append(image_start_bench(args.image_rounds, args.image_base, args.dir))
    print(f"\ngoals: {'all met' if all(results) else 'NOT all met'}")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
