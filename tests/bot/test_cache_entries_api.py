"""Two cache entries in real jobs (fake engine, S3 on moto's server, the whole app): changing one key file restores
the other as an exact hit and misses only the changed one, in the job log and in /jobs/status; the dashboard,
the metrics and Prometheus count entries."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from aiohttp.test_utils import TestClient

from config.settings import Settings, StorageSettings
from runner.logs import read_log
from tests.bot.api_helpers import api_client, runtime_of
from tests.conftest import git
from tests.fake_engine import FakeEngine, Script
from tests.runner.test_store import MotoServer, moto_server  # noqa: F401 - a fixture

MakeRepo = Callable[..., tuple[Path, str]]
PIPELINE = """
[[cache]]
name = "node"
paths = ["node_modules"]
key_files = ["package-lock.json"]

[[cache]]
name = "pip"
paths = [".venv"]
key_files = ["requirements*.txt"]
restore_keys = false

[[steps]]
name = "install"
run = "install"
"""


def commit(repo: Path, files: dict[str, str]) -> str:
    for rel, text in files.items():
        (repo / rel).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "next")
    return git(repo, "rev-parse", "HEAD")


async def run(client: TestClient, repo: Path, sha: str) -> dict[str, object]:
    answer = await (await client.post("/jobs/submit", json={"repo": str(repo), "ref": "main", "sha": sha})).json()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = await (await client.get(f"/jobs/status?id={answer['id']}")).json()
        if status["state"] not in ("queued", "running"):
            return status  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {answer['id']} did not finish")


def log_of(client: TestClient, job_id: int) -> str:
    return "\n".join(line.text for line in read_log(runtime_of(client).layout.log_file(job_id)))


async def test_two_entries_changing_one_key_file_misses_only_that_entry(
        settings: Settings, make_local_repo: MakeRepo, moto_server: MotoServer) -> None:  # noqa: F811
    storage = StorageSettings(url=moto_server.url(f"c{uuid.uuid4().hex[:12]}"), access_key_env="AK",
                              secret_key_env="SK")
    engine = FakeEngine()
    engine.on("install", Script(files={"node_modules/dep/index.js": "built", ".venv/lib/site.py": "venv"}))
    repo, first_sha = make_local_repo({".forgeci.toml": PIPELINE, "package-lock.json": "n1",
                                       "requirements.txt": "p1"})
    async with api_client(dataclasses.replace(settings, storage=storage), {"AK": "id", "SK": "secret"},
                          workers=True, engine=engine) as client:
        first = await run(client, repo, first_sha)
        assert first["state"] == "success", log_of(client, first["id"])  # type: ignore[arg-type]
        assert (first["cache"], first["cache_hit"]) == ("none", False)
        assert [(c["name"], c["result"], c["saved"]) for c in first["caches"]] == [  # type: ignore[union-attr]
            ("node", "miss", "saved"), ("pip", "miss", "saved")]
        node_key = first["caches"][0]["key"]  # type: ignore[index]

        second = await run(client, repo, commit(repo, {"requirements.txt": "p2"}))
        text = log_of(client, second["id"])  # type: ignore[arg-type]
        assert second["state"] == "success", text
        assert f"cache node: hit {node_key} (" in text and "cache pip: miss " in text
        assert "cache: node hit, pip miss" in text
        assert (second["cache"], second["cache_hit"]) == ("some", False)
        node, pip = second["caches"]  # type: ignore[misc]
        assert (node["name"], node["result"], node["restored_key"], node["saved"]) == ("node", "hit", node_key,
                                                                                       "exists")
        assert node["size"] > 0 and node["seconds"] >= 0
        assert (pip["name"], pip["result"], pip["restored_key"], pip["saved"]) == ("pip", "miss", None, "saved")

        third = await run(client, repo, commit(repo, {"package-lock.json": "n2"}))
        node, pip = third["caches"]  # type: ignore[misc]
        assert (node["result"], node["restored_key"], pip["result"]) == ("fallback", node_key, "hit")
        assert f"cache node: no entry for {node['key']}; restoring" in log_of(client, third["id"])  # type: ignore[arg-type]

        metrics = await (await client.get("/metrics?range=hour")).json()
        assert (metrics["cache_hits"], metrics["cache_lookups"]) == (2, 6)  # entries, not jobs
        assert metrics["cache_results"] == {"hit": 2, "fallback": 1, "miss": 3}
        prometheus = await (await client.get("/metrics?range=hour&format=prometheus")).text()
        assert 'forgeci_cache_restores{range="hour",result="fallback"} 1' in prometheus
        assert 'forgeci_cache_hit_ratio{range="hour"} 0.333' in prometheus
        stats = await (await client.get("/cache/stats")).json()
        assert stats["repo_limit"] == 10 << 30 and list(stats["repo_sizes"].values()) == [
            sum(e["size"] for e in stats["entries"])] and stats["count"] == 4  # node x2, pip x2
        page = await (await client.get(f"/dashboard/jobs/{second['id']}")).text()
        assert "some hit" in page and 'data-cache="node"' in page and 'data-cache="pip"' in page
