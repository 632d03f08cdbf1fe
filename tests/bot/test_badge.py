"""GET /badge/{owner}/{repo}.svg: the newest pipeline's state on a branch, its colours, caching and access."""

from __future__ import annotations

import re

from config.settings import Settings
from runner.models import JobSpec, JobState
from runner.queue import PlannedJobRow, Queue
from tests.bot.api_helpers import TOKEN, api_client, runtime_of, with_server

REPO = "https://github.com/Acme/App.git"


def pipeline(queue: Queue, ref: str = "refs/heads/main", repo: str = REPO) -> int:
    spec = JobSpec(repo=repo, ref=ref, event="push", sha="a" * 40)
    pipeline_id = queue.create_pipeline(spec)
    queue.write_plan(pipeline_id, "a" * 40, [PlannedJobRow(spec, "build", "build")])
    return pipeline_id


def run_to(queue: Queue, pipeline_id: int, state: JobState | None) -> None:
    """Claim the pipeline's job (running), and end it `state` unless None."""
    [job_id] = queue.pipeline(pipeline_id).job_ids
    claimed = queue.claim("badge-runner", 60)
    assert claimed is not None and claimed.id == job_id
    if state is not None:
        queue.complete(job_id, state, runner_id="badge-runner")


def text_and_colour(svg: str) -> tuple[str, str]:
    texts = re.findall(r"<text [^>]*>([^<]*)</text>", svg)
    colours = re.findall(r'<rect x="[0-9]+" width="[0-9]+" height="20" fill="(#[0-9a-f]+)"/>', svg)
    assert len(texts) == 2 and texts[0] == "forgeci" and len(colours) == 1, svg
    return texts[1], colours[0]


async def test_the_badge_follows_the_newest_pipeline_of_the_branch(settings: Settings) -> None:
    async with api_client(settings) as client:
        queue = runtime_of(client).queue

        async def badge(branch: str | None = "main", owner: str = "acme", name: str = "app") -> tuple[str, str]:
            response = await client.get(f"/badge/{owner}/{name}.svg", params={"branch": branch} if branch else {})
            assert response.status == 200, await response.text()
            assert response.content_type == "image/svg+xml"
            assert "no-cache" in response.headers["Cache-Control"] and response.headers["ETag"]
            return text_and_colour(await response.text())

        first = pipeline(queue)
        run_to(queue, first, None)
        assert await badge() == ("running", "#dfb317")
        queue.complete(queue.pipeline(first).job_ids[0], JobState.failure, runner_id="badge-runner")
        assert await badge() == ("failing", "#e05d44")
        second = pipeline(queue)
        run_to(queue, second, JobState.success)
        assert await badge() == ("passing", "#4c1")
        assert await badge(owner="ACME", name="app") == ("passing", "#4c1")  # GitHub's names ignore case
        other = pipeline(queue, ref="refs/heads/dev")
        run_to(queue, other, JobState.failure)
        assert await badge() == ("passing", "#4c1")  # another branch's failure is not main's
        assert await badge("dev") == ("failing", "#e05d44")
        assert await badge(None) == ("failing", "#e05d44")  # no branch: the newest pipeline of any
        assert await badge("nope") == ("no pipelines", "#9f9f9f")
        spec = JobSpec(repo=REPO, ref="refs/heads/main", event="push", sha="c" * 40)
        skipped = queue.create_pipeline(spec)  # its filters ruled out its only job
        queue.write_plan(skipped, "c" * 40, [PlannedJobRow(spec, "build", "build", skip="skipped: no change")])
        assert await badge() == ("skipped", "#9f9f9f")


async def test_an_unknown_repository_is_404_and_an_unchanged_badge_is_304(settings: Settings) -> None:
    async with api_client(settings) as client:
        queue = runtime_of(client).queue
        run_to(queue, pipeline(queue), JobState.success)
        missing = await client.get("/badge/acme/other.svg", params={"branch": "main"})
        assert missing.status == 404 and (await missing.json())["error"] == "not found"
        first = await client.get("/badge/acme/app.svg", params={"branch": "main"})
        etag = first.headers["ETag"]
        again = await client.get("/badge/acme/app.svg", params={"branch": "main"}, headers={"If-None-Match": etag})
        assert again.status == 304 and again.headers["ETag"] == etag


async def test_protect_reads_puts_the_badge_behind_the_token(settings: Settings) -> None:
    protected = with_server(settings, protect_reads=True)
    async with api_client(protected, {"FORGECI_API_TOKEN": TOKEN}) as client:
        queue = runtime_of(client).queue
        run_to(queue, pipeline(queue), JobState.success)
        assert (await client.get("/badge/acme/app.svg")).status == 401
        allowed = await client.get("/badge/acme/app.svg", headers={"Authorization": f"Bearer {TOKEN}"})
        assert allowed.status == 200 and text_and_colour(await allowed.text()) == ("passing", "#4c1")
    async with api_client(settings, {"FORGECI_API_TOKEN": TOKEN}) as client:  # reads open: no token needed
        queue = runtime_of(client).queue
        run_to(queue, pipeline(queue), JobState.success)
        assert (await client.get("/badge/acme/app.svg")).status == 200
