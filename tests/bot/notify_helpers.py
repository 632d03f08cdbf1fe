"""Stand-ins for the services notifications go to: one local aiohttp server for Slack, Discord and a webhook
receiver that verifies the signature; real SMTP servers (aiosmtpd), plain and STARTTLS with a self-signed cert."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import ipaddress
import json
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiohttp import web

try:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
except ImportError as exc:  # pragma: no cover - named, never skipped
    raise ImportError(f"{exc}: install the test extra (pip install -e '.[test]'; aiosmtpd)") from None

HOOK_SECRET = "hook-signing-key-8c1d2e"
SMTP_USER, SMTP_PASSWORD = "ci-mailer", "smtp-pass-0a9b8c"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """`/slack`, `/discord`, `/hook` on one port. `status` is what it answers (Slack says `ok`, Discord 204); a
    webhook post with a bad signature is answered 401 and not recorded; `hang` makes every request wait forever.
    `stop()` and `start()` take it off the network and back on the same port (connection refused meanwhile)."""

    port: int = field(default_factory=free_port)
    status: int = 200
    hang: bool = False
    received: list[Received] = field(default_factory=list)
    refused: list[Received] = field(default_factory=list)  # answered with an error status, or bad signature
    hanging: list[Received] = field(default_factory=list)  # read while `hang`: never answered
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def of(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def _handle(self, request: web.Request) -> web.Response:
        got = Received(request.path, dict(request.headers), await request.read())
        if self.hang:
            self.hanging.append(got)
            await asyncio.sleep(3600)
        if request.path == "/hook":
            expected = "sha256=" + hmac.new(HOOK_SECRET.encode(), got.body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, request.headers.get("X-Forgeci-Signature", "")):
                self.refused.append(got)
                return web.json_response({"error": "bad signature"}, status=401)
        if self.status >= 300:
            self.refused.append(got)
            return web.Response(status=self.status, text="unavailable")
        self.received.append(got)
        if request.path == "/discord":
            return web.Response(status=204)
        return web.Response(text="ok")

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{kind}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost and its key (PEM files), made with `cryptography`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "smtp-cert.pem", tmp / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    message: EmailMessage
    tls: bool  # the session was encrypted when the mail was sent
    login: str | None


class _Handler:
    def __init__(self) -> None:
        self.mails: list[Mail] = []

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        message = message_from_bytes(envelope.original_content or b"", policy=policy.default)
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        self.mails.append(Mail(envelope.mail_from or "", list(envelope.rcpt_tos), message,  # type: ignore[arg-type]
                               session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None,
                               login))
        return "250 OK"


def _authenticate(server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (SMTP_USER.encode(),
                                                                             SMTP_PASSWORD.encode())
    return AuthResult(success=ok, handled=False, auth_data=data)


@contextmanager
def smtp_server(tmp: Path | None = None, *, starttls: bool = False,
                implicit: bool = False) -> Iterator[tuple[int, list[Mail], Path | None]]:
    """A real SMTP server on 127.0.0.1: (port, the mails it accepted, the CA file to trust). With `starttls` it
    requires STARTTLS (a self-signed certificate) and a login (SMTP_USER, SMTP_PASSWORD) before a mail; with
    `implicit` it speaks TLS from the first byte (port 465 style) and wants the same login."""
    handler = _Handler()
    port = free_port()
    cafile = None
    kwargs: dict[str, Any] = {}
    if starttls or implicit:
        assert tmp is not None
        cafile, keyfile = self_signed(tmp)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cafile, keyfile)
        kwargs = {"authenticator": _authenticate, "auth_required": True}
        if implicit:
            kwargs |= {"ssl_context": context, "auth_require_tls": False}
        else:
            kwargs |= {"tls_context": context, "require_starttls": True}
    controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield port, handler.mails, cafile
    finally:
        controller.stop()


def text_parts(message: EmailMessage) -> tuple[str, str]:
    """(plain, html) bodies of a multipart/alternative mail."""
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert plain is not None and html is not None, message
    return plain.get_content(), html.get_content()
