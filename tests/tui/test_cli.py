"""`forgeci tui`: the server from the flag or the environment, bad URLs refused."""

from __future__ import annotations

import subprocess
import sys

import pytest

from forgeci_cli import build_parser, default_server, main


def test_tui_reads_the_server_like_the_other_client_commands(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["tui", "--server", "http://ci.example:9000"])
    assert args.server == "http://ci.example:9000" and args.func.__name__ == "cmd_tui"
    monkeypatch.delenv("FORGECI_SERVER", raising=False)
    assert default_server() == "http://127.0.0.1:8080"
    monkeypatch.setenv("FORGECI_SERVER", "ci.example:7000")  # from the environment when there is no flag
    assert main(["tui"]) == 2
    assert "'ci.example:7000'" in capsys.readouterr().err


def test_a_server_that_is_not_an_http_url_is_a_usage_error() -> None:
    result = subprocess.run([sys.executable, "-m", "forgeci_cli", "tui", "--server", "ci.example:8080"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--server must be an http:// or https:// URL" in result.stderr
