"""Server-Sent Events: encode events, and stream them with few socket writes, keep-alives and prompt cleanup."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

KEEPALIVE = 15.0  # seconds of silence before a comment line keeps proxies and clients from timing out
CHECK = 1.0  # seconds between checks that the client is still there while nothing is sent
RETRY_MS = 2000  # how long an EventSource waits before reconnecting

Send = Callable[[bytes], None]
Producer = Callable[[Send], Awaitable[None]]


def encode(data: Any, *, id: int | str | None = None, event: str | None = None) -> bytes:
    """One event; `data` is sent as compact JSON (which never holds a raw newline, so it is one data line)."""
    head = ""
    if id is not None:
        head += f"id: {id}\n"
    if event is not None:
        head += f"event: {event}\n"
    return f"{head}data: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()


def last_event_id(request: web.Request, query_key: str = "after") -> str | None:
    """The id to resume after: the Last-Event-ID header (an EventSource reconnecting), else the query's `after`."""
    return request.headers.get("Last-Event-ID") or request.query.get(query_key) or None


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def stream(
    request: web.Request, produce: Producer, *, keepalive: float = KEEPALIVE, check: float = CHECK,
    stop: asyncio.Event | None = None,
) -> web.StreamResponse:
    """Run `produce(send)` and write what it sends, batched, until it returns or the client goes away.

    The producer runs as its own task and only appends to a buffer; this loop writes everything buffered in one
    socket write whenever it wakes, so a burst of events costs one write, not one each. A client that goes away
    is noticed within `check` seconds (aiohttp does not cancel the handler), and the producer is then cancelled,
    which releases whatever it subscribed to. Setting `stop` (the server shutting down) ends the stream the same way.
    """
    buffer: list[bytes] = [f"retry: {RETRY_MS}\n\n".encode()]
    wake = asyncio.Event()

    def send(chunk: bytes) -> None:
        buffer.append(chunk)
        wake.set()

    # Started before the headers go out, so whatever it subscribes to is live by the time the client sees the
    # stream open, and a failure at its very start is still an ordinary JSON error.
    task = asyncio.create_task(produce(send))
    task.add_done_callback(lambda _: wake.set())
    await asyncio.sleep(0)
    if task.done() and not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
    })
    try:
        await response.prepare(request)
    except BaseException:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    loop = asyncio.get_running_loop()
    last_write = loop.time()
    try:
        while True:
            if buffer:
                data = b"".join(buffer)
                buffer.clear()
                await response.write(data)
                last_write = loop.time()
            elif task.done():
                break
            elif loop.time() - last_write >= keepalive:
                await response.write(b": keep-alive\n\n")
                last_write = loop.time()
            if buffer:
                continue
            wake.clear()
            try:
                async with asyncio.timeout(check):
                    await wake.wait()
            except TimeoutError:
                pass
            if _gone(request) or (stop is not None and stop.is_set()):
                break
    except (ConnectionError, RuntimeError) as exc:  # the client went away mid-write
        log.debug("SSE client of %s went away: %s", request.path, exc)
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("SSE producer of %s failed: %s", request.path, error, exc_info=error)
    return response
