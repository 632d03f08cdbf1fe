"""The coordinator's indexes as the agent's cache, snapshot and artifact managers see them: the queue methods they
call, answered over the agent API. Those managers run in threads, so each call blocks its thread while the loop
makes the request; a failure is a QueueError, which they already treat as an index that is unavailable."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from runner.agent.client import AgentClient
from runner.agent.wire import INDEX_OPS, encode_arg
from runner.errors import QueueError, RunnerError

CALL_LIMIT = 120.0  # seconds one index call may wait for a coordinator that is away


class RemoteIndex:
    """Stands in for the Queue inside CacheManager, Snapshots and ArtifactManager on an agent."""

    def __init__(self, client: AgentClient, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop
        self.path = client.server  # what the managers name in their messages

    def __getattr__(self, op: str) -> Callable[..., Any]:
        if op not in INDEX_OPS:
            raise AttributeError(op)
        names, _, decode = INDEX_OPS[op]

        def call(*args: Any, **kwargs: Any) -> Any:
            values = dict(zip(names, args, strict=False)) | kwargs
            values = {name: encode_arg(values.get(name)) for name in names}
            return decode(self._call(op, values))

        return call

    def _call(self, op: str, args: dict[str, Any]) -> Any:
        if threading.get_ident() == getattr(self._loop, "_thread_id", None):
            raise RuntimeError(f"index call {op} on the event loop's thread (it would wait for itself)")
        future = asyncio.run_coroutine_threadsafe(
            self._client.call("/index", {"op": op, "args": args}, give_up_after=CALL_LIMIT), self._loop)
        try:
            _, data = future.result(CALL_LIMIT + 30)
        except (RunnerError, TimeoutError) as exc:
            future.cancel()
            raise QueueError(f"the coordinator's index ({op}): {exc}") from exc
        return data["result"]
