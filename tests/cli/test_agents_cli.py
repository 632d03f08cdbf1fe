"""`forgeci agents token create|revoke` and `forgeci agent`'s refusals: exit 2 with one clear line."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def forgeci(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "forgeci_cli", "--config", str(config), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, check=False,
                          env={"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": str(ROOT), **(env or {})})


def config(tmp_path: Path, store: str = "") -> Path:
    path = tmp_path / "forgeci.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n' + (f'[storage]\nurl = "{store}"\n' if store else ""))
    return path


def test_a_token_is_printed_once_and_only_its_hash_is_kept(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    made = forgeci(cfg, "agents", "token", "create", "build-01")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("fca_") and len(token) > 40 and "not shown again" in made.stderr
    db = sqlite3.connect(tmp_path / "data" / "queue.db")
    dump = "\n".join(db.iterdump())
    assert "build-01" in dump and token not in dump and token[4:] not in dump
    again = forgeci(cfg, "agents", "token", "create", "build-01")
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already has a token" in again.stderr
    revoked = forgeci(cfg, "agents", "token", "revoke", "build-01")
    assert revoked.returncode == 0 and "revoked the token of agent build-01" in revoked.stdout
    twice = forgeci(cfg, "agents", "token", "revoke", "build-01")
    assert twice.returncode == 2 and "has no token to revoke" in twice.stderr
    renewed = forgeci(cfg, "agents", "token", "create", "build-01")  # a revoked name may get a new token
    assert renewed.returncode == 0 and renewed.stdout.strip() != token


def test_a_bad_name_is_refused(tmp_path: Path) -> None:
    done = forgeci(config(tmp_path), "agents", "token", "create", "no:colons")
    assert done.returncode == 2 and "agent name 'no:colons'" in done.stderr


def test_the_agent_refuses_a_missing_token_a_file_store_and_a_bad_url(tmp_path: Path) -> None:
    s3 = config(tmp_path, "s3://bucket?endpoint=http://127.0.0.1:9")
    missing = forgeci(s3, "agent", "--server", "http://127.0.0.1:8080")
    assert missing.returncode == 2 and "FORGECI_AGENT_TOKEN" in missing.stderr, missing.stderr
    filestore = forgeci(config(tmp_path), "agent", "--server", "http://127.0.0.1:8080",
                        env={"FORGECI_AGENT_TOKEN": "t"})
    assert filestore.returncode == 2 and "needs a shared s3:// object store" in filestore.stderr, filestore.stderr
    assert filestore.stderr.count("\n") == 1
    url = forgeci(s3, "agent", "--server", "ftp://x", env={"FORGECI_AGENT_TOKEN": "t"})
    assert url.returncode == 2 and "--server must be an http:// or https:// URL" in url.stderr
    second = forgeci(s3, "agent", "--server", "http://127.0.0.1:8080", "--server", "ci-b:8080",
                     env={"FORGECI_AGENT_TOKEN": "t"})  # every one of several is checked
    assert second.returncode == 2 and "got 'ci-b:8080'" in second.stderr, second.stderr
    absent = tmp_path / "nope.token"
    nofile = forgeci(s3, "agent", "--server", "http://127.0.0.1:8080", "--token-file", str(absent))
    assert nofile.returncode == 2 and "--token-file" in nofile.stderr
