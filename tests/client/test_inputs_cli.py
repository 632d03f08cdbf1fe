"""`forgeci submit --input KEY=VALUE`: the inputs reach the server; a refused one is one line and exit 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from config.settings import Settings
from forgeci_cli import main
from tests.bot.api_helpers import live_server
from tests.bot.test_inputs import DECLARED

MakeRepo = Callable[..., tuple[Path, str]]


def test_submit_passes_inputs_and_a_refused_one_exits_2(settings: Settings, make_local_repo: MakeRepo,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    repo, _ = make_local_repo({".forgeci.toml": DECLARED})
    with live_server(settings) as server:
        base = ["submit", "--repo", str(repo), "--ref", "main", "--server", server.url]
        assert main([*base, "--input", "target=qa"]) == 2
        err = capsys.readouterr().err
        assert "inputs.target: expected one of 'staging', 'prod', got 'qa'" in err and err.count("\n") <= 2
        assert main([*base, "--input", "target"]) == 2
        assert capsys.readouterr().err.strip() == "forgeci: --input: expects KEY=VALUE, got 'target'"
        assert main([*base, "--input", "target=prod", "--input", "level=debug"]) == 0
        job = server.runtime.queue.get(1)
        assert (job.spec.env["INPUT_TARGET"], job.spec.env["INPUT_LEVEL"]) == ("prod", "debug")
