"""Schemathesis against the OpenAPI document of a live server: no 5xx, and every answer as the document says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import Settings
from tests.bot.api_helpers import TOKEN, api_settings, live_server, with_server
from tests.bot.webhook_helpers import ENV as WEBHOOK_SECRETS

__all__ = ["api_settings"]

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# The two SSE streams never end on their own: they have their own tests (test_sse.py).
STREAMS = ["--exclude-operation-id", "events", "--exclude-operation-id", "jobLogs"]
# positive_data_acceptance is left out: a cursor or a duration can be a well-formed string and still be refused
# with a 400, which a schema cannot express. Everything else runs, the 5xx check first of all.
CHECKS = ["--checks", "all", "--exclude-checks", "positive_data_acceptance"]


def run_schemathesis(url: str, workdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [str(SCHEMATHESIS), "run", f"{url}/openapi.json", *CHECKS, *STREAMS, "--max-examples", "40",
            "--request-timeout", "5", "--seed", "1234", "--no-color", *extra]
    # In a scratch folder: schemathesis keeps a .schemathesis/ cache in its working directory.
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, cwd=workdir)


@pytest.mark.parametrize("with_token", [False, True], ids=["open", "token"])
def test_schemathesis_finds_no_server_error_and_no_contract_breach(api_settings: Settings, with_token: bool,
                                                                   tmp_path: Path) -> None:
    # With the forges' secrets configured, a fuzzed delivery is judged on its signature (401), not refused
    # because webhooks are off (503, which the no-server-error check would count).
    environ = {**WEBHOOK_SECRETS, **({"FORGECI_API_TOKEN": TOKEN} if with_token else {})}
    settings = with_server(api_settings, protect_reads=with_token)
    with live_server(settings, environ) as server:
        extra = ["-H", f"Authorization: Bearer {TOKEN}"] if with_token else []
        result = run_schemathesis(server.url, tmp_path, *extra)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "generated" in result.stdout
