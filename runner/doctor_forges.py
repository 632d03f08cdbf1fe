"""`forgeci doctor`'s forge checks: webhook secrets and tokens, each forge only when its variables are set."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import httpx

from config.settings import Settings, env_value
from runner.doctor import Check, fail, ok, warn

TIMEOUT = httpx.Timeout(10.0, connect=5.0)  # as the status reporter's client: what it would see, the doctor sees
MIN_SECRET = 16  # characters; a webhook secret shorter than this is guessable
USER_AGENT = "forgeci-doctor"


def forge_checks(settings: Settings, environ: Mapping[str, str],
                 transport: httpx.BaseTransport | None = None) -> list[Check]:
    """For each forge: its webhook secret (set, long enough) and its token (one API call that needs it)."""
    checks: list[Check] = []
    with httpx.Client(timeout=TIMEOUT, follow_redirects=False, transport=transport,
                      headers={"User-Agent": USER_AGENT}) as client:
        for forge in ("github", "gitea", "gitlab"):
            checks.extend(_forge(forge, settings, environ, client))
    return checks


def _forge(forge: str, settings: Settings, environ: Mapping[str, str], client: httpx.Client) -> list[Check]:
    section = getattr(settings, forge)
    secret_env, token_env = section.webhook_secret_env, section.token_env
    secret, token = env_value(secret_env, environ), env_value(token_env, environ)
    app_id = getattr(section, "app_id", 0)
    if secret is None and token is None and not app_id:
        return [ok(forge, f"not configured (${secret_env or '-'} and ${token_env or '-'} unset): skipped")]
    checks = [_secret(forge, secret, secret_env)]
    if app_id:
        checks.append(_github_app(settings, client))
    elif token is None:
        checks.append(warn(f"{forge} token", f"${token_env} is unset: no commit statuses on {forge}",
                           f"set {token_env} in the service's environment file"))
    elif not section.api_url:
        checks.append(fail(f"{forge} token", f"${token_env} is set but [{forge}] api_url is empty",
                           f"set [{forge}] api_url (e.g. https://HOST/api/{'v1' if forge == 'gitea' else 'v4'})"))
    else:
        checks.append(_token(forge, section.api_url, token, token_env, client))
    return checks


def _secret(forge: str, secret: str | None, env: str) -> Check:
    name = f"{forge} webhooks"
    if secret is None:
        return warn(name, f"${env} is unset: deliveries to /webhooks/{forge} are refused",
                    f"set {env} to the secret of the forge's webhook")
    if len(secret) < MIN_SECRET:
        return warn(name, f"${env} is only {len(secret)} characters", "use a long random secret, e.g. "
                                                                      "`openssl rand -hex 32`, here and in the forge")
    return ok(name, f"secret set (${env})")


def _auth(forge: str, token: str) -> dict[str, str]:
    if forge == "github":
        return {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json"}
    if forge == "gitea":
        return {"Authorization": f"token {token}"}
    return {"PRIVATE-TOKEN": token}


def _token(forge: str, api_url: str, token: str, env: str, client: httpx.Client) -> Check:
    """GET {api}/user with the token: the one call every forge answers for any valid token."""
    name = f"{forge} token"
    url = api_url.rstrip("/") + "/user"
    try:
        response = client.get(url, headers=_auth(forge, token))
    except httpx.HTTPError as exc:
        return fail(name, f"cannot reach {url}: {exc or type(exc).__name__}",
                    f"check [{forge}] api_url and that this host reaches it (proxy, firewall, CA)")
    if response.status_code == 200:
        login = _field(response, "login", "username", "name")
        return ok(name, f"accepted by {api_url}" + (f" (user {login})" if login else ""))
    if response.status_code == 401:
        return fail(name, f"{url} answered 401: the token in ${env} is wrong, expired or revoked",
                    f"put a valid token in {env} (it needs to post commit statuses)")
    if response.status_code == 403:  # e.g. a GitHub App installation token, or one without the read:user scope
        return warn(name, f"{url} answered 403: the token is valid but may not read its user",
                    "make sure it may post commit statuses to the repositories")
    return fail(name, f"{url} answered {response.status_code}: {response.text[:200]}",
                f"check [{forge}] api_url: it should be the API root")


def _github_app(settings: Settings, client: httpx.Client) -> Check:
    """GET /app with the App's JWT: checks the id, the key and the API in one call."""
    from gidgethub import apps
    from jwt import exceptions as jwt_errors

    github = settings.github
    name = "github app"
    if not github.private_key_path:
        return fail(name, f"app_id {github.app_id} but github.private_key_path is empty",
                    "set github.private_key_path to the App's PEM key")
    try:
        key = Path(github.private_key_path).read_text()
        jwt = apps.get_jwt(app_id=str(github.app_id), private_key=key)
    except OSError as exc:
        return fail(name, f"cannot read {github.private_key_path}: {exc.strerror or exc}",
                    "make the key readable by the server's user")
    except (ValueError, TypeError, jwt_errors.PyJWTError) as exc:  # not a PEM key, or not an RSA one
        return fail(name, f"{github.private_key_path} is not a usable private key: {exc}",
                    "download a new private key from the App's settings")
    url = github.api_url.rstrip("/") + "/app"
    try:
        response = client.get(url, headers=_auth("github", jwt))
    except httpx.HTTPError as exc:
        return fail(name, f"cannot reach {url}: {exc or type(exc).__name__}",
                    "check github.api_url and that this host reaches it")
    if response.status_code == 200:
        return ok(name, f"App {_field(response, 'slug', 'name') or github.app_id} accepted by {github.api_url}")
    return fail(name, f"{url} answered {response.status_code}: the App id or key is wrong",
                "check github.app_id and github.private_key_path")


def _field(response: httpx.Response, *names: str) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return next((str(body[n]) for n in names if isinstance(body, dict) and body.get(n)), "")
