"""What every kind of notification shares: its failure, and an HTTP post that tells retryable from permanent."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

# A client error that a later attempt may fix: timeout, conflict, too early, rate limit.
_RETRYABLE_4XX = frozenset({408, 409, 425, 429})
MAX_RETRY_AFTER = 3600.0


class DeliveryError(Exception):
    """A delivery that did not succeed; `permanent` ones are not retried (a 404 of a deleted webhook)."""

    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After", "")
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(value)))
    except ValueError:
        return None


async def post(session: aiohttp.ClientSession, url: str, body: bytes, headers: Mapping[str, str],
               timeout: float) -> int:
    """POST `body` to `url`; the status when it is 2xx, else DeliveryError (the URL is never in its text: a
    Slack or Discord webhook URL is a secret)."""
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json", **headers},
                                timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False) as response:
            await response.read()
            if 200 <= response.status < 300:
                return response.status
            permanent = 400 <= response.status < 500 and response.status not in _RETRYABLE_4XX
            raise DeliveryError(f"HTTP {response.status} {response.reason or ''}".strip(), permanent=permanent,
                                retry_after=_retry_after(response.headers))
    except TimeoutError:
        raise DeliveryError(f"no answer within {timeout:g}s") from None
    except aiohttp.ClientError as exc:
        raise DeliveryError(f"cannot reach the endpoint: {type(exc).__name__}") from None
