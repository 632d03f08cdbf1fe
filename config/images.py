"""A job image built from the repository: `image = { containerfile = "ci/Containerfile", context = "." }`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Final

from config.schema import (
    NONEMPTY,
    Issues,
    Kind,
    decode,
    describe,
    encode,
    nonempty_text,
    option,
    scalar,
)

IMAGE_DOC: Final = ('job image: an image name, or `{ containerfile = "PATH", context = "." }` to build one from the '
                    "repository (paths relative to its root)")


def _repo_path(value: object) -> str:
    """A path inside the checkout: the build must not read files outside the repository."""
    found = nonempty_text(value)
    if found.startswith(("/", "~")) or ".." in PurePosixPath(found).parts:
        raise ValueError(f"expected a path inside the repository (relative, without '..'), got {describe(found)}")
    return found


_PATH: Final = scalar("path", _repo_path)


@dataclass(frozen=True, kw_only=True)
class ImageBuild:
    """An image the runner builds from a Containerfile of the checkout before the job's steps run."""

    containerfile: str = option(_PATH, "the Containerfile, relative to the repository root")
    context: str = option(_PATH, "the build context (honouring its `.containerignore`), relative to the "
                                 "repository root", ".")


def _convert(value: object, path: str, issues: Issues) -> object:
    if isinstance(value, dict):
        return decode(ImageBuild, value, path, issues)
    return NONEMPTY.convert(value, path, issues)


def _dump(value: str | ImageBuild) -> object:
    return value if isinstance(value, str) else encode(value) | {"containerfile": value.containerfile}


IMAGE: Final = Kind("string or table", _convert, _dump)


def image_texts(image: str | ImageBuild | None, path: str) -> Iterator[tuple[str, str]]:
    """(key path, text) of an image where `${{ matrix.KEY }}` is substituted."""
    if isinstance(image, ImageBuild):
        yield f"{path}.containerfile", image.containerfile
        yield f"{path}.context", image.context
    elif image is not None:
        yield path, image


def substitute_image(image: str | ImageBuild, sub: Callable[[str, str], str], path: str) -> str | ImageBuild:
    """`image` with `sub(text, key path)` applied to each of its texts."""
    if isinstance(image, str):
        return sub(image, path)
    return dataclasses.replace(image, containerfile=sub(image.containerfile, f"{path}.containerfile"),
                               context=sub(image.context, f"{path}.context"))


__all__ = ["IMAGE", "IMAGE_DOC", "ImageBuild", "image_texts", "substitute_image"]
