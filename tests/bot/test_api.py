"""The JSON API: submitting, reading, steering jobs; every kind of bad input is a JSON error, never a 500."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import runner.queue.base
from bot.api import ROUTES
from config.settings import Settings
from runner.models import CacheEntry, JobState
from tests.bot.api_helpers import api_client, api_settings, enqueue, finish, free_port, parse_sse, runtime_of

__all__ = ["api_settings"]

REPO = "https://git.example.test/acme/app.git"
MakeRepo = Callable[..., tuple[Path, str]]
DIAMOND = ''.join(f'[jobs.{name}]\nneeds = {needs}\nsteps = [{{ run = "true" }}]\n'
                  for name, needs in (("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])))


async def error_of(response: object, status: int) -> dict[str, object]:
    assert response.status == status, await response.text()  # type: ignore[attr-defined]
    body = await response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error", "detail"}, body
    return body


async def test_submit_enqueues_with_defaults_and_returns_201_with_the_id(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        response = await client.post("/jobs/submit", json={"repo": REPO, "ref": "main", "sha": "a" * 40,
                                                            "env": {"A": "1"},
                                                            "steps": [{"name": "t", "run": "make test"}]})
        assert response.status == 201  # an inline pipeline needs no fetch: planned before the answer
        answer = await response.json()
        job_id, pipeline_id = answer["id"], answer["pipeline"]
        assert answer == {"id": job_id, "pipeline": pipeline_id, "jobs": [job_id]}
        assert response.headers["Location"] == f"/jobs/status?id={job_id}"
        job = runtime_of(client).queue.get(job_id)
        assert job.state is JobState.queued and (job.pipeline_id, job.name) == (pipeline_id, "ci")
        assert job.spec.priority == api_settings.queue.default_priority
        assert (job.spec.repo, job.spec.ref, job.spec.sha, job.spec.event) == (REPO, "main", "a" * 40, "manual")
        assert job.spec.env == {"A": "1"}
        assert job.spec.pipeline == {"steps": [{"name": "t", "run": "make test"}]}


async def test_submit_plans_the_repository_file_before_it_answers(api_settings: Settings,
                                                                 make_local_repo: MakeRepo) -> None:
    repo, sha = make_local_repo({".forgeci.toml": DIAMOND})
    async with api_client(api_settings) as client:
        response = await client.post("/jobs/submit", json={"repo": str(repo), "ref": "main"})
        assert response.status == 201
        answer = await response.json()
        assert len(answer["jobs"]) == 4 and answer["id"] == answer["jobs"][0]
        jobs = [await (await client.get(f"/jobs/status?id={job_id}")).json() for job_id in answer["jobs"]]
        assert [(j["name"], j["display"], j["needs"], j["waiting"]) for j in jobs] == [
            ("a", "a", [], False), ("b", "b", ["a"], True), ("c", "c", ["a"], True), ("d", "d", ["b", "c"], True)]
        assert all(j["pipeline_id"] == answer["pipeline"] and j["spec"]["sha"] == sha for j in jobs)
        pipeline = await (await client.get(f"/pipelines/{answer['pipeline']}")).json()
        assert (pipeline["state"], pipeline["sha"], pipeline["job_ids"]) == ("queued", sha, answer["jobs"])


async def test_a_submit_whose_fetch_fails_answers_202_and_goes_on_planning(api_settings: Settings,
                                                                          tmp_path: Path) -> None:
    async with api_client(api_settings) as client:
        response = await client.post("/jobs/submit", json={"repo": str(tmp_path / "nowhere"), "ref": "main"})
        assert response.status == 202 and "Location" not in response.headers
        answer = await response.json()
        assert answer == {"id": None, "pipeline": answer["pipeline"], "jobs": [], "planning": True}
        pipeline = await (await client.get(f"/pipelines/{answer['pipeline']}")).json()
        assert pipeline["state"] == "planning" and pipeline["job_ids"] == []
        assert pipeline["error"].startswith("cannot fetch the pipeline: ") and pipeline["plan_attempts"] == 1


async def test_an_unknown_pipeline_is_a_404_and_a_bad_id_a_400(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        error = await error_of(await client.get("/pipelines/99"), 404)
        assert error["detail"] == "pipeline 99 not found"
        for path in ("x", "0", str(2**63), "9" * 5000, "status", "-1"):
            error = await error_of(await client.get(f"/pipelines/{path}"), 400)
            assert "pipeline id" in str(error["detail"])


@pytest.mark.parametrize(("body", "key"), [
    ({"ref": "main"}, "repo"),
    ({"repo": REPO, "ref": 5}, "ref"),
    ({"repo": "", "ref": "main"}, "repo"),
    ({"repo": REPO, "ref": "main", "priority": 11}, "priority"),
    ({"repo": REPO, "ref": "main", "priority": -1}, "priority"),
    ({"repo": REPO, "ref": "main", "priority": True}, "priority"),
    ({"repo": REPO, "ref": "main", "priority": "5"}, "priority"),
    ({"repo": REPO, "ref": "main", "env": {"A": 1}}, "env"),
    ({"repo": REPO, "ref": "main", "env": []}, "env"),
    ({"repo": REPO, "ref": "main", "steps": []}, "steps"),
    ({"repo": REPO, "ref": "main", "steps": [{"name": "x"}]}, "run"),
    ({"repo": REPO, "ref": "main", "steps": "make"}, "steps"),
    ({"repo": REPO, "ref": "main", "sha": 12}, "sha"),
    ({"repo": REPO, "ref": "main", "colour": "red"}, "colour"),
])
async def test_submit_rejects_bad_fields_with_a_400_naming_the_key(api_settings: Settings, body: dict[str, object],
                                                                    key: str) -> None:
    async with api_client(api_settings) as client:
        error = await error_of(await client.post("/jobs/submit", json=body), 400)
        assert key in json.dumps(error["detail"])
        assert runtime_of(client).queue.active_counts()[0] == 0


@pytest.mark.parametrize("data", [b"{", b"[1, 2]", b'"text"', b"null", b"\xff\xfe", b"{" * 100_000])
async def test_invalid_json_is_a_400(api_settings: Settings, data: bytes) -> None:
    async with api_client(api_settings) as client:
        for path in ("/jobs/submit", "/jobs/cancel", "/jobs/retry", "/jobs/priority"):
            await error_of(await client.post(path, data=data, headers={"Content-Type": "application/json"}), 400)


async def test_a_body_that_is_not_json_is_a_415(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        response = await client.post("/jobs/submit", data="repo=x&ref=main",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        await error_of(response, 415)


async def test_an_oversized_body_is_a_413_declared_or_streamed(api_settings: Settings) -> None:
    big = json.dumps({"repo": REPO, "ref": "main", "env": {"X": "y" * (2 * 1024 * 1024)}}).encode()
    async with api_client(api_settings) as client:
        await error_of(await client.post("/jobs/submit", data=big, headers={"Content-Type": "application/json"}), 413)

        async def chunks():  # no Content-Length: the limit must hold while reading, too
            for start in range(0, len(big), 65536):
                yield big[start:start + 65536]

        response = await client.post("/jobs/submit", data=chunks(), headers={"Content-Type": "application/json"})
        await error_of(response, 413)
        assert runtime_of(client).queue.active_counts()[0] == 0


async def test_status_returns_the_job_with_steps_durations_cache_and_attempts(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        queue = runtime_of(client).queue
        job_id = enqueue(queue)
        finish(queue, job_id, JobState.failure, steps=(("install", "success"), ("test", "failure")))
        response = await client.get(f"/jobs/status?id={job_id}")
        assert response.status == 200
        job = await response.json()
        assert job["id"] == job_id and job["state"] == "failure" and job["attempts"] == 1
        assert [(s["name"], s["state"]) for s in job["steps"]] == [("install", "success"), ("test", "failure")]
        assert all(isinstance(s["duration"], float) for s in job["steps"])
        assert isinstance(job["duration"], float) and job["cache_hit"] is None and job["snapshot"] is None


@pytest.mark.parametrize("query", ["", "?id=", "?id=abc", "?id=-3", "?id=0", "?id=1.5", f"?id={2**64}",
                                   "?id=%EF%BC%91"])
async def test_status_with_a_bad_id_is_a_400(api_settings: Settings, query: str) -> None:
    async with api_client(api_settings) as client:
        await error_of(await client.get(f"/jobs/status{query}"), 400)
        await error_of(await client.get(f"/jobs/logs{query}"), 400)


async def test_unknown_job_ids_are_404_everywhere(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        await error_of(await client.get("/jobs/status?id=999"), 404)
        await error_of(await client.get("/jobs/logs?id=999"), 404)
        for path, body in (("/jobs/cancel", {"id": 999}), ("/jobs/retry", {"id": 999}),
                           ("/jobs/priority", {"id": 999, "priority": 3})):
            await error_of(await client.post(path, json=body), 404)


async def test_list_is_newest_first_paginated_and_filtered(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        queue = runtime_of(client).queue
        ids = [enqueue(queue, repo=f"https://git.example.test/acme/r{i % 2}.git") for i in range(7)]
        finish(queue, ids[0])
        seen: list[int] = []
        cursor = None
        while True:
            response = await client.get("/jobs", params={"limit": "3", **({"cursor": cursor} if cursor else {})})
            page = await response.json()
            seen += [job["id"] for job in page["jobs"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == ids[::-1]
        page = await (await client.get("/jobs", params={"repo": "https://git.example.test/acme/r1.git"})).json()
        assert [job["id"] for job in page["jobs"]] == [i for i in ids[::-1] if ids.index(i) % 2 == 1]
        page = await (await client.get("/jobs", params={"status": "success"})).json()
        assert [job["id"] for job in page["jobs"]] == [ids[0]]


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=ten", "limit=99999999999999999999",
                                   "order=oldest", "status=done", "cursor=%%%", "cursor=WyJkaXNwYXRjaCIsMV0",
                                   "order=dispatch&status=success", "colour=red"])
async def test_bad_list_parameters_are_400(api_settings: Settings, query: str) -> None:
    async with api_client(api_settings) as client:
        await error_of(await client.get(f"/jobs?{query}"), 400)


async def test_priority_reorders_the_dispatch_list_and_refuses_outside_0_to_10(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        queue = runtime_of(client).queue
        a, b, c = (enqueue(queue) for _ in range(3))

        async def dispatch() -> list[int]:
            return [job["id"] for job in (await (await client.get("/jobs?order=dispatch")).json())["jobs"]]

        assert await dispatch() == [a, b, c]
        response = await client.post("/jobs/priority", json={"id": c, "priority": 9})
        assert response.status == 200 and await response.json() == {"id": c, "priority": 9}
        assert await dispatch() == [c, a, b]
        for bad in (11, -1, 2.5, "9", None, True):
            await error_of(await client.post("/jobs/priority", json={"id": a, "priority": bad}), 400)
        assert await dispatch() == [c, a, b]


async def test_cancel_and_priority_of_a_finished_job_are_409(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        queue = runtime_of(client).queue
        job_id = enqueue(queue)
        finish(queue, job_id)
        await error_of(await client.post("/jobs/cancel", json={"id": job_id}), 409)
        await error_of(await client.post("/jobs/priority", json={"id": job_id, "priority": 1}), 409)
        assert queue.get(job_id).state is JobState.success


async def test_cancel_of_a_queued_job_ends_it_and_publishes_the_change(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        runtime = runtime_of(client)
        job_id = enqueue(runtime.queue)
        events = await client.get("/events")
        assert events.status == 200 and events.headers["Content-Type"].startswith("text/event-stream")
        response = await client.post("/jobs/cancel", json={"id": job_id})
        assert await response.json() == {"id": job_id, "state": "cancelled", "cancel_requested": True}
        assert runtime.queue.get(job_id).state is JobState.cancelled
        text = ""
        while "cancelled" not in text:
            text += (await asyncio.wait_for(events.content.readany(), 10)).decode()
        event = json.loads(next(e for e in parse_sse(text) if e.get("event") == "job")["data"])
        assert (event["job_id"], event["state"], event["kind"]) == (job_id, "cancelled", "state")
        events.close()
        await error_of(await client.post("/jobs/cancel", json={"id": job_id}), 409)


async def test_retry_makes_a_new_job_of_a_finished_one_only(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        queue = runtime_of(client).queue
        job_id = enqueue(queue, sha="b" * 40, priority=7)
        await error_of(await client.post("/jobs/retry", json={"id": job_id}), 409)
        finish(queue, job_id, JobState.failure)
        response = await client.post("/jobs/retry", json={"id": job_id})
        assert response.status == 201
        answer = await response.json()
        assert answer["retry_of"] == job_id and answer["id"] != job_id
        new = queue.get(answer["id"])
        assert new.state is JobState.queued and new.spec.sha == "b" * 40 and new.spec.priority == 7
        assert new.spec.meta["retry_of"] == str(job_id)
        await error_of(await client.post("/jobs/retry", json={"id": job_id, "from_failed_step": "yes"}), 400)


@pytest.mark.parametrize("body", [{}, {"id": "1"}, {"id": 1.5}, {"id": True}, {"id": 0}, {"id": 2**64},
                                  {"id": 1, "extra": 1}, {"id": None}])
async def test_job_ids_in_bodies_are_validated(api_settings: Settings, body: dict[str, object]) -> None:
    async with api_client(api_settings) as client:
        enqueue(runtime_of(client).queue)
        for path in ("/jobs/cancel", "/jobs/retry"):
            await error_of(await client.post(path, json=body), 400)


async def test_a_locked_database_is_a_503_not_a_500(api_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner.queue.base, "BUSY_TIMEOUT", 0.2)  # how long the queue waits for a lock
    async with api_client(api_settings) as client:
        queue = runtime_of(client).queue
        job_id = enqueue(queue)
        other = sqlite3.connect(queue.path, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")  # another process holds the database
            error = await error_of(await client.post("/jobs/submit", json={"repo": REPO, "ref": "main"}), 503)
            assert error["error"] == "queue unavailable"
            await error_of(await client.post("/jobs/cancel", json={"id": job_id}), 503)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert (await client.post("/jobs/cancel", json={"id": job_id})).status == 200


async def test_openapi_describes_exactly_the_registered_api_routes(api_settings: Settings) -> None:
    async with api_client(api_settings) as client:
        doc = await (await client.get("/openapi.json")).json()
        assert doc["openapi"].startswith("3.")
        described = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
        registered = {(method, re.sub(r":[^}]*", "", path)) for method, path, _, _ in ROUTES}
        assert registered <= described
        routes = {(r.method, r.resource.canonical) for r in client.server.app.router.routes() if r.resource}
        assert described <= routes | {("HEAD", p) for _, p in routes}, described - routes


def cache_entry(key: str, size: int = 1000, hits: int = 0) -> CacheEntry:
    now = time.time()
    return CacheEntry(key=key, repo=key.split("/")[0], scope="main", image="img", paths=("node_modules",),
                      object=f"caches/{key}.tar.zst", size=size, checksum="0" * 64, created_at=now, last_used=now,
                      hits=hits)


async def test_cache_stats_and_delete(api_settings: Settings, tmp_path: Path) -> None:
    async with api_client(api_settings) as client:
        runtime = runtime_of(client)
        archive = tmp_path / "archive"
        archive.write_bytes(b"x" * 1000)
        for key, hits in (("acme-app/main/aaa", 3), ("acme-web/main/bbb", 0)):
            runtime.queue.add_cache_entry(cache_entry(key, hits=hits))
            runtime.store.put_file(f"caches/{key}.tar.zst", archive)
        stats = await (await client.get("/cache/stats")).json()
        assert {e["key"] for e in stats["entries"]} == {"acme-app/main/aaa", "acme-web/main/bbb"}
        assert (stats["count"], stats["total_size"], stats["hits"]) == (2, 2000, 3)
        assert stats["hit_rate"] is None  # no job tried a restore this week
        only = await (await client.get("/cache/stats?repo=acme-web&limit=5")).json()
        assert [e["key"] for e in only["entries"]] == ["acme-web/main/bbb"]
        for query in ("limit=0", "limit=1001", "limit=x", "colour=red"):
            await error_of(await client.get(f"/cache/stats?{query}"), 400)
        response = await client.delete("/cache/acme-app%2Fmain%2Faaa")
        assert response.status == 200 and (await response.json())["deleted"]["key"] == "acme-app/main/aaa"
        assert runtime.queue.cache_entry("acme-app/main/aaa") is None
        assert [o.key for o in runtime.store.list("caches/")] == ["caches/acme-web/main/bbb.tar.zst"]
        await error_of(await client.delete("/cache/acme-app/main/aaa"), 404)


async def test_a_store_that_is_down_is_a_503(api_settings: Settings) -> None:
    dead = dataclasses.replace(api_settings.storage,
                               url=f"s3://forgeci-test?endpoint=http://127.0.0.1:{free_port()}&secure=false")
    settings = dataclasses.replace(api_settings, storage=dead)
    async with api_client(settings, {"FORGECI_S3_ACCESS_KEY": "k" * 8, "FORGECI_S3_SECRET_KEY": "s" * 16}) as client:
        runtime_of(client).queue.add_cache_entry(cache_entry("acme-app/main/ccc"))
        error = await error_of(await client.delete("/cache/acme-app%2Fmain%2Fccc"), 503)
        assert error["error"] == "store unavailable" and "s" * 16 not in json.dumps(error)


async def test_maintenance_prunes_now_and_reports(api_settings: Settings) -> None:
    settings = dataclasses.replace(api_settings, retention=dataclasses.replace(api_settings.retention, job_days=0))
    async with api_client(settings) as client:
        queue = runtime_of(client).queue
        old, newest = enqueue(queue), enqueue(queue)
        finish(queue, old)
        finish(queue, newest)
        report = await (await client.post("/admin/maintenance")).json()
        assert report["jobs"] == 1 and report["errors"] == []  # the newest job is always kept (ids are never reused)
        await error_of(await client.get(f"/jobs/status?id={old}"), 404)
        assert (await client.post("/admin/maintenance", json={})).status == 200
        await error_of(await client.post("/admin/maintenance", json={"now": 1}), 400)
