"""The file:// store: objects as files under one folder, written atomically (temporary file, fsync, rename)."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from runner.errors import ObjectMissing, StoreError
from runner.store.base import CHUNK, TMP, ObjectInfo, ObjectStore, check_key
from runner.streams import Readable

T = TypeVar("T")


class FileStore(ObjectStore):
    """Objects as files under `root`. A write goes to `root/.tmp`, is fsynced and renamed into place: readers see
    the old object or the new one, never a part, and concurrent writers of one key each win whole."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = Path(root).absolute()
        self.url = f"file://{self.root}"
        try:
            (self.root / TMP).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the store folder {self.root}: {exc.strerror}") from exc

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _io(self, what: str, func: Callable[[], T]) -> T:
        try:
            result = func()
        except ObjectMissing:
            self._record(None)
            raise
        except OSError as exc:
            self._record(f"{what}: {exc}")
            raise StoreError(f"{what}: {exc.strerror or exc}") from exc
        self._record(None)
        return result

    def _write(self, key: str, fill: Callable[[BinaryIO], None]) -> ObjectInfo:
        target = self._path(key)
        tmp = self.root / TMP / f"{uuid.uuid4().hex}"

        def write() -> ObjectInfo:
            try:
                with open(tmp, "xb") as out:
                    fill(out)
                    out.flush()
                    os.fsync(out.fileno())
                for _ in range(3):  # a concurrent delete may remove an empty parent folder in between
                    target.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        os.replace(tmp, target)
                        break
                    except FileNotFoundError:
                        continue
                else:
                    raise OSError(f"cannot move the new object into {target.parent}")
                _fsync_dir(target.parent)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            return self._info(key, target)

        return self._io(f"writing {key}", write)

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        def fill(out: BinaryIO) -> None:
            with open(path, "rb") as source:
                shutil.copyfileobj(source, out, CHUNK)

        return self._write(key, fill)

    def put_stream(self, key: str, stream: Readable) -> ObjectInfo:
        def fill(out: BinaryIO) -> None:
            while data := stream.read(CHUNK):
                out.write(data)

        return self._write(key, fill)

    def get_file(self, key: str, path: Path) -> ObjectInfo:
        source = self._path(key)

        def copy() -> ObjectInfo:
            try:
                shutil.copyfile(source, path)
            except FileNotFoundError:
                if not source.exists():
                    raise ObjectMissing(key) from None
                raise
            return self._info(key, source)

        return self._io(f"reading {key}", copy)

    @contextlib.contextmanager
    def get_stream(self, key: str) -> Iterator[Readable]:
        source = self._path(key)

        def open_it() -> BinaryIO:
            try:
                return open(source, "rb")
            except FileNotFoundError:
                raise ObjectMissing(key) from None

        with self._io(f"reading {key}", open_it) as stream:
            yield stream

    def stat(self, key: str) -> ObjectInfo:
        def stat() -> ObjectInfo:
            try:
                return self._info(key, self._path(key))
            except FileNotFoundError:
                raise ObjectMissing(key) from None

        return self._io(f"looking up {key}", stat)

    @staticmethod
    def _info(key: str, path: Path) -> ObjectInfo:
        st = os.stat(path)
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only the deepest folder the prefix names in full.
        folder = prefix.rpartition("/")[0]
        if folder:
            check_key(folder)
        start = self.root / folder if folder else self.root
        found: list[ObjectInfo] = []

        def walk() -> None:
            for dirpath, dirnames, filenames in os.walk(start):
                rel = os.path.relpath(dirpath, self.root)
                rel = "" if rel == "." else rel + "/"
                if not rel:
                    dirnames[:] = [d for d in dirnames if d != TMP]
                dirnames.sort()
                for name in sorted(filenames):
                    key = rel + name
                    if key.startswith(prefix):
                        with contextlib.suppress(FileNotFoundError):  # deleted while we walked
                            found.append(self._info(key, Path(dirpath) / name))

        self._io(f"listing {prefix or 'the store'}", walk)
        yield from found

    def delete(self, key: str) -> None:
        target = self._path(key)

        def delete() -> None:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            parent = target.parent
            while parent != self.root:  # empty folders go too, or the store fills with them
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent

        self._io(f"deleting {key}", delete)

    def check(self) -> None:
        def probe() -> None:
            if not os.access(self.root / TMP, os.W_OK | os.X_OK):
                raise OSError(f"{self.root / TMP} is not writable")

        self._io("checking the store", probe)

    def clean_tmp(self, older_than: float) -> int:
        """Remove unfinished writes a crash left, older than `older_than` (unix time); returns how many."""
        removed = 0
        for entry in os.scandir(self.root / TMP):
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime < older_than:
                    os.unlink(entry.path)
                    removed += 1
        return removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
