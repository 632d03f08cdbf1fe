"""Who may call what: the API token (Bearer, constant-time), read protection, dashboard sessions and CSRF."""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from bot.errors import HTTPError
from config.settings import Settings, env_value

SESSION_COOKIE = "forgeci_session"
SESSION_SECONDS = 12 * 3600
CSRF_FIELD = "csrf"

Access = Literal["public", "read", "write"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Session:
    """A valid dashboard session: the nonce its CSRF token derives from, and when it ends."""

    nonce: str
    expires: int
    authenticated: bool  # signed in with the token (always False when no token is configured)


@dataclass(frozen=True, repr=False)
class Auth:
    """The server's access policy. `token` None: no token configured, everything is open (loopback only)."""

    token: str | None
    protect_reads: bool
    secure_cookies: bool
    key: bytes  # signs session cookies and CSRF tokens

    def __repr__(self) -> str:
        return f"Auth(token={'set' if self.token else 'none'}, protect_reads={self.protect_reads})"

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str]) -> Auth:
        token = env_value(settings.server.api_token_env, environ)
        # Derived from the token, sessions survive a restart and die when the token changes; without a token
        # the sessions only carry CSRF tokens, and a per-process key is enough.
        key = hashlib.sha256(b"forgeci-session\0" + token.encode()).digest() if token else secrets.token_bytes(32)
        return cls(token, settings.server.protect_reads, settings.server.public_url.startswith("https:"), key)

    # -- tokens ---------------------------------------------------------------------------------------

    def token_matches(self, candidate: str) -> bool:
        """Constant time in the candidate's content: digests of equal length are compared."""
        if self.token is None:
            return False
        given = hashlib.sha256(candidate.encode("utf-8", "surrogateescape")).digest()
        return hmac.compare_digest(given, hashlib.sha256(self.token.encode()).digest())

    def bearer_ok(self, request: web.Request) -> bool:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(value.strip())

    def may_read(self, request: web.Request) -> bool:
        if self.token is None or not self.protect_reads:
            return True
        session = self.session(request)
        return self.bearer_ok(request) or (session is not None and session.authenticated)

    def may_write(self, request: web.Request) -> bool:
        # Never the session cookie: a browser sends it with any request; the dashboard's forms carry CSRF tokens.
        return self.token is None or self.bearer_ok(request)

    # -- sessions and CSRF ----------------------------------------------------------------------------

    def _sign(self, text: str) -> str:
        return hmac.new(self.key, text.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()  # cookie text

    def new_session(self, authenticated: bool, now: float | None = None) -> str:
        """A signed cookie value: `expires.nonce.kind.signature`."""
        expires = int(now if now is not None else time.time()) + SESSION_SECONDS
        body = f"{expires}.{secrets.token_urlsafe(18)}.{'a' if authenticated else 'n'}"
        return f"{body}.{self._sign(body)}"

    def session(self, request: web.Request, now: float | None = None) -> Session | None:
        """The request's valid session, if its cookie carries one."""
        return self.read_session(request.cookies.get(SESSION_COOKIE, ""), now)

    def read_session(self, value: str, now: float | None = None) -> Session | None:
        """The session in a cookie value: None when forged, tampered with or expired."""
        body, _, signature = value.rpartition(".")
        # Bytes: compare_digest raises TypeError for a str with non-ASCII characters, which a cookie may carry.
        if not body or not hmac.compare_digest(signature.encode("utf-8", "surrogateescape"), self._sign(body).encode()):
            return None
        expires_text, nonce, kind = (body.split(".") + ["", "", ""])[:3]
        if not expires_text.isdigit() or int(expires_text) < (now if now is not None else time.time()):
            return None
        return Session(nonce, int(expires_text), kind == "a" and self.token is not None)

    def csrf_token(self, session: Session) -> str:
        return self._sign(f"csrf.{session.nonce}")[:32]

    def csrf_ok(self, session: Session | None, candidate: str) -> bool:
        return session is not None and hmac.compare_digest(candidate.encode(), self.csrf_token(session).encode())

    def set_cookie(self, response: web.StreamResponse, value: str) -> None:
        response.set_cookie(SESSION_COOKIE, value, max_age=SESSION_SECONDS, path="/", httponly=True,
                            samesite="Strict", secure=self.secure_cookies)

    def clear_cookie(self, response: web.StreamResponse) -> None:
        response.del_cookie(SESSION_COOKIE, path="/")


def guard(auth: Auth, access: Access, handler: Handler) -> Handler:
    """Wrap a JSON endpoint: 401 unless the request may `read` or `write` (`public` lets everyone in)."""
    if access == "public":
        return handler

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        allowed = auth.may_write(request) if access == "write" else auth.may_read(request)
        if not allowed:
            raise HTTPError(401, "unauthorized", "send the API token as `Authorization: Bearer TOKEN`")
        return await handler(request)

    return guarded
