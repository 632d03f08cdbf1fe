"""Fixtures for the console's tests: the app on a pinned clock over the respx-faked API of tests.client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from textual.pilot import Pilot

import respx

from client.api import Client
from tests.client.conftest import APP, seed
from tests.client.fake_api import BASE, NOW, FakeApi
from tests.tui.fake_pipelines import seed_pipelines
from tui.app import ForgeciApp

__all__ = ["APP", "seed"]


@pytest.fixture
def api() -> Iterator[FakeApi]:
    """The client tests' fake API and its six jobs (no pipelines yet)."""
    with respx.mock(assert_all_called=False) as router:
        fake = FakeApi(router)
        seed(fake)
        yield fake


@pytest.fixture
def piped(api: FakeApi) -> FakeApi:
    """The fake API with five pipelines (tests.tui.fake_pipelines.seed_pipelines)."""
    seed_pipelines(api)
    return api


@pytest.fixture
def make_app(api: FakeApi) -> Callable[..., ForgeciApp]:
    """make_app(token=None): the console on a fresh client of the fake API, its clock pinned to NOW."""

    def make(token: str | None = None) -> ForgeciApp:
        return ForgeciApp(Client(BASE, token), clock=lambda: NOW)

    return make


async def wait_until(pilot: Pilot[None], condition: Callable[[], object], timeout: float = 5.0,
                     what: str = "the condition") -> None:
    """Let the app run until `condition()` holds; fail after a generous `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await pilot.pause(0.02)


def record_notifications(app: ForgeciApp) -> list[tuple[str, str]]:
    """Every (severity, title + message) the app shows from now on, kept after the toasts time out."""
    seen: list[tuple[str, str]] = []
    notify = app.notify

    def recording(message: str, *, title: str = "", severity: str = "information", **kwargs: object) -> None:
        seen.append((severity, f"{title}: {message}" if title else message))
        notify(message, title=title, severity=severity, **kwargs)  # type: ignore[arg-type]

    app.notify = recording  # type: ignore[method-assign]
    return seen
