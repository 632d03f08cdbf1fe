"""aiohttp application: forge webhooks, HTTP API, SSE, dashboard and commit-status reporting."""
