"""A fault-injecting, recording HTTP proxy: late answers, silence, 500s, corrupted data, or gone (S3, the API)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

import aiohttp
from aiohttp import web

Mode = Literal["pass", "slow", "stall", "error", "corrupt", "hold_uploads"]
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
              "proxy-authenticate", "host", "content-length"}
S3_ERROR = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code><Message>We encountered an '
            b"internal error. Please try again.</Message><RequestId>fault</RequestId></Error>")


@dataclass
class Seen:
    method: str
    path: str
    mode: str
    status: int = 0
    created: bytes = b""  # the body of a 201 answer: what the client was told it created


@dataclass
class FaultProxy:
    """Forwards every request to `upstream` unless `mode` says otherwise:

    - slow: each request waits `delay` seconds first
    - stall: no answer at all (the client's timeout decides)
    - error: 500 InternalError, as S3 answers when it is failing
    - corrupt: object data (GETs of /bucket/key) comes back with flipped bytes; the rest is untouched
    - hold_uploads: PUT and POST requests wait until `release` is set; `upload_held` says one is waiting
    `down()` closes the listener and resets every open connection: the server is gone.
    """

    upstream: str
    mode: Mode = "pass"
    delay: float = 0.0
    seen: list[Seen] = field(default_factory=list)
    upload_held: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    _open: set[asyncio.BaseTransport] = field(default_factory=set)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=120))
        app = web.Application(client_max_size=1 << 30)
        # [\s\S], not `.`: a path whose decoded form holds a newline (%0A) is forwarded too, not answered by this
        # proxy's own router with a text/plain 404 that the client would take for the upstream's.
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def down(self) -> None:
        """Stop listening and reset every connection that is open, in the middle of whatever it carries."""
        for transport in list(self._open):
            transport.abort()
        await self.close()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def count(self, mode: str) -> int:
        return sum(s.mode == mode for s in self.seen)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(request.method, request.path_qs, self.mode)
        self.seen.append(seen)
        if request.transport is not None:
            self._open.add(request.transport)
        try:
            response = await self._answer(request, seen.mode)
        finally:
            if request.transport is not None:
                self._open.discard(request.transport)
        seen.status = response.status
        if response.status == 201 and isinstance(response.body, bytes):
            seen.created = response.body
        return response

    async def _answer(self, request: web.Request, mode: str) -> web.Response:
        if mode == "stall":
            await asyncio.sleep(3600)
        if mode == "error":
            return web.Response(status=500, body=S3_ERROR, content_type="application/xml")
        if mode == "slow":
            await asyncio.sleep(self.delay)
        body = await request.read()
        if mode == "hold_uploads" and request.method in ("PUT", "POST"):
            self.upload_held.set()
            await self.release.wait()
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Host"] = request.headers.get("Host", "")
        async with self._session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                         data=body or None, allow_redirects=False) as upstream:
            data = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP | {"content-encoding"}}
            if request.method == "HEAD":
                # A HEAD's Content-Length is the object's size: the client reads it from there.
                return web.Response(status=upstream.status, headers={
                    **out, "Content-Length": upstream.headers.get("Content-Length", "0")})
            is_object = request.path.strip("/").count("/") >= 1 and not request.query_string  # /bucket/key
            if mode == "corrupt" and request.method == "GET" and is_object and len(data) > 64:
                damaged = bytearray(data)
                for i in range(16, len(damaged), max(1, len(damaged) // 8)):
                    damaged[i] ^= 0xFF
                data = bytes(damaged)
            return web.Response(status=upstream.status, body=data, headers=out)
