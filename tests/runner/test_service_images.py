"""The service images' Containerfiles: their build context, and the PostgreSQL entrypoint's conventions in a job."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from config.settings import Settings
from runner.errors import RunnerError
from runner.images import context_files
from runner.models import JobState
from runner.runtime import open_runtime
from tests.runner.test_executor import log_lines, log_text, submit, wait_terminal

ROOT = Path(__file__).resolve().parents[2]
MakeRepo = Callable[..., tuple[Path, str]]


def test_a_build_context_holds_only_what_the_containerfile_copies(tmp_path: Path) -> None:
    assert context_files((ROOT / "Containerfile").read_text(), ROOT / "Containerfile") == []
    for name in ("postgres", "redis"):
        containerfile = ROOT / "images" / name / "Containerfile"
        assert context_files(containerfile.read_text(), containerfile) == ["entrypoint.sh"]
    bad = tmp_path / "Containerfile"
    for line in ("COPY ../secret /x", "COPY /etc/passwd /x", "ADD --chmod=755 missing.sh /x"):
        with pytest.raises(RunnerError, match="only files beside it"):
            context_files(f"FROM x\n{line}\n", bad)


@pytest.mark.slow
@pytest.mark.podman
async def test_postgres_takes_its_user_and_database_from_env_and_refuses_to_start_without_a_password(
        settings: Settings, make_repo: MakeRepo, postgres_image: str) -> None:
    service = f'[services.db]\nimage = "{postgres_image}"\nready = "pg_isready -h 127.0.0.1"\n'
    custom, _ = make_repo({".forgeci.toml": f'image = "{postgres_image}"\n' + service + '''
env = { POSTGRES_USER = "app", POSTGRES_PASSWORD = "s3cret", POSTGRES_DB = "appdb" }
[[steps]]
name = "who"
run = "PGPASSWORD=s3cret psql -h db -U app -d appdb -qAt -c 'select current_user, current_database()'"
'''})
    bare, _ = make_repo({".forgeci.toml": service + '[[steps]]\nrun = "true"\n'})
    async with open_runtime(settings, {}) as rt:
        job = await wait_terminal(rt, submit(rt, custom), timeout=120)
        refused = await wait_terminal(rt, submit(rt, bare), timeout=60)
        refused_text = log_text(rt, refused.id)
    assert job.state is JobState.success, log_text(rt, job.id)
    assert log_lines(rt, job.id, "who") == ["app|appdb"]
    assert refused.state is JobState.failure
    assert refused.error == "service db exited with code 1 before it was ready"
    assert "db | forgeci-postgres: the database is uninitialized and POSTGRES_PASSWORD is not set" in refused_text
