"""Typed application keys, in one place, for everything the aiohttp app shares between handlers."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from config.settings import Settings
from runner.runtime import Runtime

SETTINGS = web.AppKey("settings", Settings)
ENVIRON = web.AppKey("environ", Mapping)
RUNTIME = web.AppKey("runtime", Runtime)
