"""Typed application keys, in one place, for everything the aiohttp app shares between handlers."""

from __future__ import annotations

from collections.abc import Mapping
import asyncio
from dataclasses import dataclass

from aiohttp import web

from bot.auth import Auth
from bot.metrics import MetricsCache
from bot.status.reporter import StatusReporter
from config.settings import Settings
from runner.runtime import Runtime


@dataclass(frozen=True)
class StreamTiming:
    """How often SSE streams send keep-alive comments and check that their client is still there (seconds)."""

    keepalive: float = 15.0
    check: float = 1.0


SETTINGS = web.AppKey("settings", Settings)
ENVIRON = web.AppKey("environ", Mapping)
RUNTIME = web.AppKey("runtime", Runtime)
AUTH = web.AppKey("auth", Auth)
STREAM_TIMING = web.AppKey("stream_timing", StreamTiming)
CLOSING = web.AppKey("closing", asyncio.Event)  # set at shutdown: open SSE streams end instead of holding it up
METRICS = web.AppKey("metrics", MetricsCache)  # range aggregates shared by /metrics and the dashboard
STATUS = web.AppKey("status", StatusReporter)  # commit statuses to the forges (bot.status)
