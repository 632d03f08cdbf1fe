"""The dashboard's server-rendered pages: numbers, chart, job page with steps and coloured log, escaping."""

from __future__ import annotations

import re

import pytest
from aiohttp.test_utils import TestClient

from bot.auth import SESSION_COOKIE
from bot.dashboard import ansi, dag
from bot.dashboard.views import MAX_LOG_LINES
from bot.keys import AUTH
from config.settings import Settings
from runner.models import Job, JobSpec, JobState, PipelineState
from runner.queue import PlannedJobRow
from tests.bot.api_helpers import TOKEN, api_client, api_settings, enqueue, finish, runtime_of, write_log
from tests.bot.dashboard_helpers import REPO, SHA, make_pipeline, run

__all__ = ["api_settings"]


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


async def test_the_overview_shows_the_four_numbers_chart_and_live_lists(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        queue = runtime_of(client).queue
        for state in ("success", "success", "success", "failure"):
            finish(queue, enqueue(queue), state)
        running = enqueue(queue, ref="feature/live")
        queued = enqueue(queue, ref="feature/waiting")
        queue.claim("test-runner", 60)
        response = await client.get("/dashboard")
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/html")
        html = await response.text()
        text = text_of(html)
        assert re.search(r'id="stat-jobs">4<', html) and re.search(r'id="stat-success">75\.0%<', html)
        assert "Average duration" in text and "Cache hit rate" in text
        assert html.count("<svg") == 1 and html.count('class="bar ok"') >= 1 and 'class="bar fail"' in html
        assert "feature/live" in text and "feature/waiting" in text
        assert f'href="/dashboard/jobs/{running}"' in html and f'href="/dashboard/jobs/{queued}"' in html
        assert '<script src="/dashboard/static/live.js' in html and 'data-live-src=' in html
        assert "Content-Security-Policy" in response.headers


@pytest.mark.parametrize("range_name", ["hour", "day", "week"])
async def test_the_range_switch(api_settings: Settings, range_name: str) -> None:
    async with api_client(api_settings) as client:
        html = await (await client.get(f"/dashboard?range={range_name}")).text()
        assert re.search(rf'href="/dashboard\?range={range_name}" class="on"', html)
        assert f"No job finished in the last {range_name}" in html
        fragment = await (await client.get(f"/dashboard/fragments/overview?range={range_name}")).text()
        assert "<html" not in fragment and 'id="stat-jobs"' in fragment
    async with api_client(api_settings) as client:
        response = await client.get("/dashboard?range=year", allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == "/dashboard"


async def test_the_job_page_shows_steps_cache_and_the_log_with_colours_escaped(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        runtime = runtime_of(client)
        job_id = enqueue(runtime.queue, sha="d" * 40)
        log = write_log(runtime, job_id, ["\x1b[1;32mPASS\x1b[0m all good", "<script>alert(1)</script> & more"])
        log.close()
        claimed = runtime.queue.claim("test-runner", 60)
        assert claimed is not None
        runtime.queue.set_cache_hit(job_id, True)
        for index, (name, state) in enumerate((("install", "success"), ("test", "failure"))):
            runtime.queue.start_step(job_id, index, name)
            runtime.queue.finish_step(job_id, index, state, 0 if state == "success" else 2)
        runtime.queue.complete(job_id, JobState.failure, "step test exited 2", runner_id="test-runner")
        html = await (await client.get(f"/dashboard/jobs/{job_id}")).text()
        text = text_of(html)
        assert f"Job #{job_id}" in text and "failure" in text and "step test exited 2" in text
        assert "install" in text and "test" in text and "dddddddddddd" in text
        assert 'class="pill ok">hit<' in html
        assert '<span class="a-fg2 a-b">PASS</span> all good' in html
        assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html
        assert 'id="retry"' in html and 'id="retry-failed"' in html and 'id="cancel"' not in html
        assert 'data-follow="no"' in html
        raw = await (await client.get(f"/dashboard/jobs/{job_id}/log.txt")).text()
        assert raw == "PASS all good\n<script>alert(1)</script> & more\n"


async def test_a_running_jobs_page_follows_and_offers_cancel(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        runtime = runtime_of(client)
        job_id = enqueue(runtime.queue)
        runtime.queue.claim("test-runner", 60)
        log = write_log(runtime, job_id, ["one", "two"])
        html = await (await client.get(f"/dashboard/jobs/{job_id}")).text()
        assert 'data-follow="yes"' in html and 'data-after="2"' in html and 'id="cancel"' in html
        log.close()


async def test_a_long_log_shows_its_tail_and_links_the_rest(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        runtime = runtime_of(client)
        job_id = enqueue(runtime.queue)
        write_log(runtime, job_id, [f"row {i}" for i in range(MAX_LOG_LINES + 10)]).close()
        finish(runtime.queue, job_id)
        html = await (await client.get(f"/dashboard/jobs/{job_id}")).text()
        assert "10 earlier lines" in html and 'id="L11"' in html and 'id="L10"' not in html


async def test_unknown_jobs_and_bad_paths(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        response = await client.get("/dashboard/jobs/424242")
        assert response.status == 404 and "Job not found" in await response.text()
        for path in ("/dashboard/jobs/abc", "/dashboard/jobs/-1", f"/dashboard/jobs/{2**70}"):
            assert (await client.get(path)).status == 404
        response = await client.get("/", allow_redirects=False)
        assert response.status == 302 and response.headers["Location"] == "/dashboard"
        assert (await client.get("/dashboard/static/style.css")).status == 200


@pytest.mark.parametrize(("text", "html"), [
    ("plain <b>", "plain &lt;b&gt;"),
    ("\x1b[31mred\x1b[0m plain", '<span class="a-fg1">red</span> plain'),
    ("\x1b[1;94mbright\x1b[22m thin", '<span class="a-fg12 a-b">bright</span><span class="a-fg12"> thin</span>'),
    ("\x1b[38;5;208mo\x1b[48;2;1;2;3mx", '<span style="color:#ff8700">o</span>'
                                        '<span style="color:#ff8700;background-color:#010203">x</span>'),
    ("\x1b[2K\x1b[1Gprogress 50%\r", "progress 50%\r"),
    ("\x1b]0;title\x07after", "after"),
    ("\x1b[38;5mbroken\x1b[m", "broken"),
])
def test_ansi_to_html(text: str, html: str) -> None:
    assert ansi.to_html(text)[0] == html


def test_ansi_strip() -> None:
    assert ansi.strip("\x1b[1m\x1b[32mok\x1b[0m \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\") == "ok link"


# -- pipelines ------------------------------------------------------------------------------------------------------


def nodes_of(html: str) -> dict[int, int]:
    """job id -> the graph column its box is in."""
    return {int(job): int(column) for job, column in
            re.findall(r'id="node-(\d+)" href="/dashboard/jobs/\1" data-column="(\d+)"', html)}


async def csrf_of(client: TestClient, path: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', await (await client.get(path)).text())
    assert match, f"no form on {path}"
    return match.group(1)


async def test_the_pipeline_page_draws_its_jobs_in_columns_by_depth(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        queue = runtime_of(client).queue
        pipeline_id, ids = make_pipeline(queue)
        run(queue, ids[0])
        run(queue, ids[1], JobState.running)
        response = await client.get(f"/dashboard/pipelines/{pipeline_id}")
        assert response.status == 200 and "Content-Security-Policy" in response.headers
        html = await response.text()
        assert nodes_of(html) == {ids[0]: 0, **{job_id: 1 for job_id in ids[1:7]}, ids[7]: 2}
        assert html.count('<path class="edge') == 12  # lint -> 6 members, 6 members -> build
        assert html.count('class="edge e-done"') == 6 and html.count('class="edge e-pending"') == 6
        assert f'class="node st-success" id="node-{ids[0]}"' in html
        assert f'class="node st-running" id="node-{ids[1]}"' in html
        assert f'class="node st-queued waiting" id="node-{ids[7]}"' in html and "waits for test" in html
        text = text_of(html)
        assert "python=3.12, db=mysql" in text and "1 running" in text and "6 queued" in text and "1 success" in text
        assert 'id="cancel-pipeline"' in html and 'id="retry"' not in html
        assert f'data-live-src="/dashboard/pipelines/{pipeline_id}/graph"' in html
        assert f'data-jobs="{" ".join(map(str, ids))}"' in html
        fragment = await (await client.get(f"/dashboard/pipelines/{pipeline_id}/graph")).text()
        assert "<html" not in fragment and nodes_of(fragment) == nodes_of(html)


async def test_a_finished_pipeline_offers_retry_and_retry_failed(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        queue = runtime_of(client).queue
        pipeline_id, ids = make_pipeline(queue)
        run(queue, ids[0])
        for job_id in ids[1:7]:
            run(queue, job_id, JobState.failure if job_id == ids[3] else JobState.success)
        html = await (await client.get(f"/dashboard/pipelines/{pipeline_id}")).text()
        assert 'class="badge st-failure">failure<' in html  # the pipeline's own badge
        assert f'class="node st-skipped" id="node-{ids[7]}"' in html and "not run: " in html
        assert html.count('class="edge e-failed"') == 1
        assert 'id="retry"' in html and 'id="retry-failed"' in html and 'id="cancel-pipeline"' not in html


async def test_pipeline_buttons_cancel_and_retry_failed_with_the_sessions_csrf(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        queue = runtime_of(client).queue
        pipeline_id, ids = make_pipeline(queue)
        run(queue, ids[0])
        run(queue, ids[1], JobState.running)
        path = f"/dashboard/pipelines/{pipeline_id}"
        forged = await client.post(f"{path}/cancel", data={"csrf": "0" * 32}, allow_redirects=False)
        assert forged.status == 403 and queue.pipeline(pipeline_id).state is PipelineState.running
        csrf = await csrf_of(client, path)
        response = await client.post(f"{path}/cancel", data={"csrf": csrf}, allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == path
        assert all(queue.get(job_id).state is JobState.cancelled for job_id in ids[2:])
        queue.complete(ids[1], JobState.cancelled, runner_id="test-runner")  # its runner stops it
        assert queue.pipeline(pipeline_id).state is PipelineState.cancelled
        again = await client.post(f"{path}/cancel", data={"csrf": csrf}, allow_redirects=False)
        assert again.status == 303  # already finished: the page shows how
        response = await client.post(f"{path}/retry-failed", data={"csrf": csrf}, allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == path
        assert queue.get(ids[0]).state is JobState.success  # kept
        assert [queue.get(job_id).state for job_id in ids[1:]] == [JobState.queued] * 7
        refused = await client.post(f"{path}/retry-failed", data={"csrf": csrf}, allow_redirects=False)
        assert refused.status == 409 and "Cannot retry" in await refused.text()
        missing = await client.post("/dashboard/pipelines/4242/cancel", data={"csrf": csrf}, allow_redirects=False)
        assert missing.status == 404 and "Pipeline not found" in await missing.text()


async def test_retry_pipeline_makes_a_new_one_at_the_same_commit(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        runtime = runtime_of(client)
        spec = JobSpec(repo=REPO, ref="main", sha=SHA, pipeline={"steps": [{"name": "build", "run": "make"}]})
        submitted = await runtime.control.submit_pipeline(spec)
        finish(runtime.queue, submitted.job_ids[0], JobState.failure)
        path = f"/dashboard/pipelines/{submitted.pipeline_id}"
        response = await client.post(f"{path}/retry", data={"csrf": await csrf_of(client, path)},
                                     allow_redirects=False)
        assert response.status == 303
        new_id = int(response.headers["Location"].rsplit("/", 1)[1])
        record = runtime.queue.pipeline(new_id)
        assert new_id != submitted.pipeline_id and record.sha == SHA
        assert record.spec.meta["retry_of_pipeline"] == str(submitted.pipeline_id)
        html = await (await client.get(f"/dashboard/pipelines/{new_id}")).text()
        assert f'href="/dashboard/pipelines/{submitted.pipeline_id}">pipeline #{submitted.pipeline_id}<' in html


async def test_pipeline_buttons_need_a_signed_in_user_when_a_token_is_set(api_settings: Settings) -> None:
    async with api_client(api_settings, {"FORGECI_API_TOKEN": TOKEN}) as client:
        queue = runtime_of(client).queue
        pipeline_id, _ = make_pipeline(queue)
        path = f"/dashboard/pipelines/{pipeline_id}"
        html = await (await client.get(path)).text()
        assert 'id="cancel-pipeline"' not in html and f'href="/dashboard/login?next={path}"' in html
        # Even with its session's own CSRF token, an anonymous visitor is sent to sign in first.
        auth = client.app[AUTH]
        cookie = next(c for c in client.session.cookie_jar if c.key == SESSION_COOKIE)
        session = auth.read_session(cookie.value)
        assert session is not None
        response = await client.post(f"{path}/cancel", data={"csrf": auth.csrf_token(session)},
                                     allow_redirects=False)
        assert response.status == 303
        assert response.headers["Location"] == f"/dashboard/login?next=%2Fdashboard%2Fpipelines%2F{pipeline_id}"
        assert queue.pipeline(pipeline_id).state is PipelineState.queued


async def test_unknown_pipelines_and_bad_pipeline_paths(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        response = await client.get("/dashboard/pipelines/424242")
        assert response.status == 404 and "Pipeline not found" in await response.text()
        assert (await client.get("/dashboard/pipelines/424242/graph")).status == 404
        for path in ("/dashboard/pipelines/abc", "/dashboard/pipelines/-1", f"/dashboard/pipelines/{2**70}"):
            assert (await client.get(path)).status == 404


async def test_the_overview_lists_pipelines_with_their_jobs_and_job_pages_link_back(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        queue = runtime_of(client).queue
        first, first_ids = make_pipeline(queue, [("ci", "ci", ())], ref="feature/one")
        run(queue, first_ids[0])
        second, ids = make_pipeline(queue)
        run(queue, ids[0], JobState.running)
        html = await (await client.get("/dashboard")).text()
        assert html.index(f'id="pl-{second}"') < html.index(f'id="pl-{first}"')  # newest first
        row = html[html.index(f'id="pl-{second}"'):html.index(f'id="pl-{first}"')]
        assert f'href="/dashboard/pipelines/{second}"' in row and row.count("<i class=\"bg-") == 8
        assert [int(j) for j in re.findall(r'<a href="/dashboard/jobs/(\d+)">', row)] == ids
        assert "python=3.11, db=postgres" in row and "needs lint" in row
        job = await (await client.get(f"/dashboard/jobs/{ids[3]}")).text()
        assert f'id="pipeline-link">← Pipeline #{second}<' in job and "test (python=3.11, db=mysql)" in job
        assert "needs lint" in job


def waits_because(html: str, job_id: int) -> str | None:
    """The "Waits because" cell of a job's row in the overview's queued list."""
    row = re.search(rf'<tr id="queued-{job_id}">(.*?)</tr>', html, re.S)
    cell = row and re.search(r'<td class="note wait">([^<]*)</td>', row.group(1))
    return cell.group(1) if cell else None


async def test_the_overview_says_why_each_queued_job_waits_as_the_api_does(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        queue = runtime_of(client).queue  # two slots (max_concurrent = 2)
        _, (lint, unit, docs, build) = make_pipeline(
            queue, [("lint", "lint", ()), ("unit", "unit", ()), ("docs", "docs", ()), ("build", "build", ("lint",))])
        run(queue, lint, JobState.running)
        html = await (await client.get("/dashboard")).text()
        queued = html[html.index('id="count-queued"'):]
        assert "Waits because" in queued
        assert waits_because(queued, build) == "waits for lint" and waits_because(queued, unit) == "next in line"
        run(queue, unit, JobState.running)
        fragment = await (await client.get("/dashboard/fragments/overview")).text()
        api = {job["id"]: job["wait_reason"]
               for job in (await (await client.get("/jobs?order=dispatch")).json())["jobs"]}
        assert api == {docs: "no free slot: 2 of 2 running", build: "waits for lint"}
        for job_id, reason in api.items():
            assert waits_because(fragment, job_id) == reason
        assert f'id="queued-{unit}"' not in fragment and f'id="running-{unit}"' in fragment
        assert 'class="note wait"' not in fragment[:fragment.index('id="count-queued"')]  # only the queued list


def job(job_id: int, name: str, needs: tuple[str, ...] = (), display: str | None = None) -> Job:
    return Job(id=job_id, spec=JobSpec(repo=REPO, ref="main"), state=JobState.queued, name=name,
               display=display or name, needs=needs, pipeline_id=1)


def test_depth_is_one_more_than_the_deepest_need_and_survives_bad_rows() -> None:
    diamond = [job(1, "a"), job(2, "b", ("a",)), job(3, "c", ("a",)), job(4, "d", ("b", "c"))]
    assert dag.depths(diamond) == {"a": 0, "b": 1, "c": 1, "d": 2}
    assert dag.depths([job(1, "a", ("gone",)), job(2, "b", ("a",))]) == {"a": 0, "b": 1}
    cycle = dag.depths([job(1, "a", ("b",)), job(2, "b", ("a",))])  # config check refuses it; the page still draws
    assert set(cycle) == {"a", "b"}
    assert dag.layout([]).nodes == [] and dag.layout([]).width == 0


def test_an_edge_that_skips_a_column_passes_it_in_a_lane_of_its_own() -> None:
    jobs = [job(1, "checkout"), job(2, "lint", ("checkout",)), job(3, "unit", ("checkout",)),
            job(4, "types", ("checkout",)), job(5, "package", ("checkout", "unit"))]
    graph = dag.layout(jobs)
    column_of = {node.job.id: node.column for node in graph.nodes}
    assert column_of == {1: 0, 2: 1, 3: 1, 4: 1, 5: 2}
    skip = next(e for e in graph.edges if e.source.job.id == 1 and e.target.job.id == 5)
    lane = re.search(r"(\d+) H\d+", skip.path)  # the curve into the lane ends at its height, then runs level
    assert lane is not None
    lane_y = int(lane.group(1))
    boxes = [n for n in graph.nodes if n.column == 1]
    assert all(not n.y <= lane_y <= n.y + dag.BOX_H for n in boxes), (lane_y, [n.y for n in boxes])
    assert len(graph.edges) == 5
    for column in (0, 1, 2):  # no two boxes of a column overlap
        ys = sorted(n.y for n in graph.nodes if n.column == column)
        assert all(b - a >= dag.BOX_H for a, b in zip(ys, ys[1:]))
    assert [c.names for c in graph.columns] == [["checkout"], ["lint", "unit", "types"], ["package"]]


def test_a_matrix_stays_together_and_its_members_are_labelled_by_their_values() -> None:
    members = [job(2 + i, "test", ("lint",), f"test (python=3.1{i})") for i in range(3)]
    graph = dag.layout([job(1, "lint"), *members, job(5, "build", ("test",))])
    column = [n for n in graph.nodes if n.column == 1]
    assert [n.job.id for n in column] == [2, 3, 4] and not any(n.named for n in column)
    assert dag.member_of(members[0]) == "python=3.10" and dag.member_of(job(9, "lint")) == ""
    assert len([e for e in graph.edges if e.target.job.id == 5]) == 3


async def test_a_pipeline_still_planning_or_never_planned_says_so(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        queue = runtime_of(client).queue
        planning = queue.create_pipeline(JobSpec(repo=REPO, ref="main"))
        html = await (await client.get(f"/dashboard/pipelines/{planning}")).text()
        assert "Planning: the jobs appear" in html and 'id="cancel-pipeline"' in html and 'id="dag"' not in html
        failed = queue.create_pipeline(JobSpec(repo=REPO, ref="main"))
        queue.plan_failed(failed, "could not fetch the repository", retry_in=None)
        html = await (await client.get(f"/dashboard/pipelines/{failed}")).text()
        assert "could not fetch the repository" in html and "No job was planned." in html
        assert 'id="retry"' in html and 'id="retry-failed"' not in html
        overview = await (await client.get("/dashboard")).text()
        assert f'id="pl-{failed}"' in overview and "could not fetch the repository" in overview


async def test_a_skipped_pipeline_shows_its_grey_badge_and_why(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        queue = runtime_of(client).queue
        spec = JobSpec(repo=REPO, ref="refs/heads/main", sha=SHA, event="push")
        pipeline_id = queue.create_pipeline(spec)
        queue.write_plan(pipeline_id, SHA, [PlannedJobRow(spec, "src", "src", skip="skipped: no change under src/**")])
        html = await (await client.get(f"/dashboard/pipelines/{pipeline_id}")).text()
        assert 'class="badge st-skipped">skipped<' in html and "no change under src/**" in html
        assert 'id="retry-failed"' not in html and 'id="cancel-pipeline"' not in html
        overview = await (await client.get("/dashboard")).text()
        assert 'class="badge st-skipped">skipped<' in overview
