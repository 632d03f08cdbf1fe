"""The job view's artifact list: loaded once a job has ended, hidden while it kept none."""

from __future__ import annotations

from typing import Any

from textual.app import App, ComposeResult

from client.artifacts import ArtifactInfo
from client.models import JobInfo
from tests.tui.conftest import wait_until
from tui.artifacts import ArtifactList, artifact_text

LISTING = {"artifacts": [{
    "id": 1, "job_id": 7, "display": "build", "state": "kept", "error": None, "size": 1_500_000,
    "total_size": 3_000_123, "expires_at": 1_800_000_000.0, "links": {"archive": "http://x/artifacts/dl/1/a"},
    "files": [{"path": f"dist/f{i}.bin", "size": 1000 * i, "sha256": "0" * 64, "url": "http://x/f"} for i in range(8)],
}], "links_expire_at": 1_800_000_000}


class FakeClient:
    """Answers GET /artifacts as a server would (the widget needs nothing else)."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.asked: list[dict[str, str]] = []

    async def request(self, method: str, path: str, *, params: dict[str, str] | None = None, body: Any = None) -> Any:
        assert (method, path) == ("GET", "/artifacts")
        self.asked.append(dict(params or {}))
        return self.answer


class One(App[None]):
    def compose(self) -> ComposeResult:
        yield ArtifactList(id="artifacts")


def job(state: str) -> JobInfo:
    return JobInfo(id=7, repo="r", ref="main", sha=None, state=state, priority=5)


async def test_a_finished_jobs_files_are_listed_and_a_running_job_asks_for_none() -> None:
    client = FakeClient(LISTING)
    app = One()
    async with app.run_test(size=(80, 24)) as pilot:
        view = app.query_one(ArtifactList)
        view.show_for(client, job("running"))  # type: ignore[arg-type]
        await pilot.pause(0.05)
        assert client.asked == [] and not view.display
        view.show_for(client, job("success"))  # type: ignore[arg-type]
        await wait_until(pilot, lambda: view.display)
        text = str(view.render())
        assert "8 files, 2.9 MB" in text and "dist/f0.bin" in text and "… and 2 more" in text
        view.show_for(client, job("success"))  # type: ignore[arg-type]
        await pilot.pause(0.05)
        assert client.asked == [{"job": "7"}]  # once per ending, not on every refresh


async def test_a_job_that_kept_none_says_why_and_one_without_artifacts_stays_hidden() -> None:
    text = artifact_text([])
    assert str(text) == ""
    app = One()
    async with app.run_test(size=(80, 24)) as pilot:
        view = app.query_one(ArtifactList)
        view.show_for(FakeClient({"artifacts": []}), job("failure"))  # type: ignore[arg-type]
        await pilot.pause(0.1)
        assert not view.display
    kept_none = {"artifacts": [{**LISTING["artifacts"][0], "state": "not kept", "error": "the upload failed: x",
                                "files": []}]}
    shown = artifact_text([ArtifactInfo.from_dict(kept_none["artifacts"][0])])
    assert str(shown) == "artifacts none kept: the upload failed: x"
