"""Access: the API token on writes (and reads with protect_reads), dashboard sessions, CSRF, the loopback rule."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from bot.auth import SESSION_COOKIE, Auth
from config.settings import Settings
from forgeci_cli import main
from runner.models import JobState
from tests.bot.api_helpers import TOKEN, api_client, api_settings, enqueue, runtime_of, with_server

__all__ = ["api_settings"]

ENV = {"FORGECI_API_TOKEN": TOKEN}
BEARER = {"Authorization": f"Bearer {TOKEN}"}
WRITES = [("/jobs/submit", {"repo": "r", "ref": "main"}), ("/jobs/cancel", {"id": 1}), ("/jobs/retry", {"id": 1}),
          ("/jobs/priority", {"id": 1, "priority": 3})]
READS = ["/jobs", "/jobs/status?id=1", "/metrics", "/jobs/logs?id=1&follow=false"]


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer ",
                                    f"Bearer {TOKEN[:-1]}"])
async def test_writes_need_the_exact_token(api_settings: Settings, header: str | None) -> None:
    async with api_client(api_settings, ENV) as client:
        enqueue(runtime_of(client).queue)
        for path, body in WRITES:
            response = await client.post(path, json=body, headers={"Authorization": header} if header else {})
            assert response.status == 401, path
            answer = await response.json()
            assert answer["error"] == "unauthorized" and TOKEN not in str(answer)
        job = runtime_of(client).queue.get(1)
        assert job.state is JobState.queued and job.spec.priority == 5


async def test_the_right_token_is_accepted_and_reads_stay_open_without_protect_reads(api_settings: Settings) -> None:
    async with api_client(api_settings, ENV) as client:
        body = {"repo": "r", "ref": "main", "steps": [{"name": "s", "run": "true"}]}  # inline: job 1 at once
        response = await client.post("/jobs/submit", json=body, headers=BEARER)
        assert response.status == 201 and (await response.json())["id"] == 1
        for path in READS:
            assert (await client.get(path)).status == 200, path
        assert (await client.get("/dashboard")).status == 200
        lower = {"Authorization": f"bearer {TOKEN}"}  # the scheme is case-insensitive
        assert (await client.post("/jobs/cancel", json={"id": 1}, headers=lower)).status == 200


async def test_protect_reads_guards_reads_the_dashboard_and_the_streams(api_settings: Settings) -> None:
    settings = with_server(api_settings, protect_reads=True)
    async with api_client(settings, ENV) as client:
        enqueue(runtime_of(client).queue)
        for path in [*READS, "/events"]:
            assert (await client.get(path)).status == 401, path
            assert (await client.get(path, headers=BEARER)).status == 200, path
        assert (await client.get("/openapi.json")).status == 200  # documentation, not data
        response = await client.get("/dashboard/jobs/1", allow_redirects=False)
        assert response.status == 303 and response.headers["Location"].startswith("/dashboard/login?next=")


async def sign_in(client: TestClient, token: str) -> int:
    response = await client.post("/dashboard/login", data={"token": token, "next": "/dashboard/jobs/1"},
                                 allow_redirects=False)
    return response.status


async def csrf_of(client: TestClient, path: str) -> str:
    html = await (await client.get(path)).text()
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


async def test_signing_in_sets_an_httponly_samesite_strict_session(api_settings: Settings) -> None:
    settings = with_server(api_settings, protect_reads=True)
    async with api_client(settings, ENV) as client:
        enqueue(runtime_of(client).queue)
        assert await sign_in(client, "wrong") == 401
        response = await client.post("/dashboard/login", data={"token": TOKEN, "next": "/dashboard/jobs/1"},
                                     allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == "/dashboard/jobs/1"
        cookie = response.headers["Set-Cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert TOKEN not in cookie
        # The session opens the dashboard and the streams it uses, but never the JSON API's writes.
        assert (await client.get("/dashboard/jobs/1")).status == 200
        assert (await client.get("/jobs/logs?id=1&follow=false")).status == 200
        assert (await client.post("/jobs/cancel", json={"id": 1})).status == 401


async def test_an_open_redirect_after_sign_in_is_refused(api_settings: Settings) -> None:
    async with api_client(api_settings, ENV) as client:
        for target in ("https://evil.example/", "//evil.example/dashboard", "/dashboard\\@evil"):
            response = await client.post("/dashboard/login", data={"token": TOKEN, "next": target},
                                         allow_redirects=False)
            assert response.headers["Location"] == "/dashboard"


async def test_dashboard_buttons_need_a_session_and_its_csrf_token(api_settings: Settings) -> None:
    async with api_client(api_settings, ENV) as client:
        queue = runtime_of(client).queue
        job_id = enqueue(queue)
        page = await (await client.get(f"/dashboard/jobs/{job_id}")).text()
        assert "Sign in to cancel or retry" in page and 'action="/dashboard/jobs/1/cancel"' not in page
        assert await sign_in(client, TOKEN) == 303
        csrf = await csrf_of(client, f"/dashboard/jobs/{job_id}")
        forged = await client.post(f"/dashboard/jobs/{job_id}/cancel", data={"csrf": "0" * 32}, allow_redirects=False)
        assert forged.status == 403 and queue.get(job_id).state is JobState.queued
        missing = await client.post(f"/dashboard/jobs/{job_id}/cancel", data={}, allow_redirects=False)
        assert missing.status == 403
        response = await client.post(f"/dashboard/jobs/{job_id}/cancel", data={"csrf": csrf}, allow_redirects=False)
        assert response.status == 303 and queue.get(job_id).state is JobState.cancelled
        response = await client.post(f"/dashboard/jobs/{job_id}/retry", data={"csrf": csrf}, allow_redirects=False)
        new_id = int(response.headers["Location"].rsplit("/", 1)[1])
        assert queue.get(new_id).spec.meta["retry_of"] == str(job_id)


async def test_a_csrf_token_of_another_session_or_a_tampered_cookie_is_refused(api_settings: Settings) -> None:
    async with api_client(api_settings, ENV) as first, api_client(api_settings, ENV) as second:
        job_id = enqueue(runtime_of(first).queue)
        assert await sign_in(first, TOKEN) == 303 and await sign_in(second, TOKEN) == 303
        csrf = await csrf_of(second, f"/dashboard/jobs/{job_id}")
        response = await first.post(f"/dashboard/jobs/{job_id}/cancel", data={"csrf": csrf}, allow_redirects=False)
        assert response.status == 403
        auth = Auth.from_settings(api_settings, ENV)
        value = auth.new_session(authenticated=False)
        expires, nonce, _, signature = value.split(".")
        assert auth.read_session(value) is not None
        assert auth.read_session(f"{expires}.{nonce}.a.{signature}") is None  # promoted to signed in: refused
        assert auth.read_session(f"{int(expires) + 999}.{nonce}.n.{signature}") is None
        assert auth.read_session(value, now=int(expires) + 1) is None  # expired


async def test_without_a_token_everything_is_open_but_forms_still_need_csrf(api_settings: Settings) -> None:
    async with api_client(api_settings, {}) as client:
        queue = runtime_of(client).queue
        job_id = enqueue(queue)
        assert (await client.post("/jobs/priority", json={"id": job_id, "priority": 2})).status == 200
        response = await client.post(f"/dashboard/jobs/{job_id}/cancel", data={"csrf": "x"}, allow_redirects=False)
        assert response.status == 403
        csrf = await csrf_of(client, f"/dashboard/jobs/{job_id}")
        response = await client.post(f"/dashboard/jobs/{job_id}/cancel", data={"csrf": csrf}, allow_redirects=False)
        assert response.status == 303 and queue.get(job_id).state is JobState.cancelled


def test_the_token_comparison_is_exact() -> None:
    auth = Auth.from_settings(Settings.default(), ENV)
    assert auth.token_matches(TOKEN)
    for other in ("", TOKEN[:-1], TOKEN + " ", TOKEN.upper(), "x" * 1000, "\udcff"):
        assert not auth.token_matches(other)
    assert TOKEN not in repr(auth)
    assert not Auth.from_settings(Settings.default(), {}).token_matches("")


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::", "example.com"])
def test_serve_refuses_a_non_loopback_address_without_a_token(tmp_path: Path, host: str,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("FORGECI_API_TOKEN", raising=False)
    config = tmp_path / "forgeci.toml"
    config.write_text(f'data_dir = "{tmp_path}/data"\n[server]\nhost = "{host}"\n')
    assert main(["--config", str(config), "serve"]) == 2
    err = capsys.readouterr().err
    assert f"refusing to listen on {host} without an API token" in err
    assert "FORGECI_API_TOKEN" in err and "export" in err
