"""The client's errors, under the project's ForgeciError; the CLI turns them into exit codes, the TUI into notices."""

from __future__ import annotations

from typing import Any

from config.errors import ForgeciError

TOKEN_ENV = "FORGECI_API_TOKEN"  # where the CLI and the console read the API token from


class ClientError(ForgeciError):
    """A call to the server failed; `status` is the HTTP status (0 when there was no answer), `detail` the server's."""

    def __init__(self, message: str, status: int = 0, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail

    @property
    def details(self) -> list[str]:
        """The server's detail as a list of messages (a 400 lists one per problem)."""
        if isinstance(self.detail, list):
            return [str(item) for item in self.detail]
        return [str(self.detail)] if self.detail else []


class ServerUnreachable(ClientError):
    """No answer: the server is down, the address is wrong, or the connection broke for good."""


class AuthFailed(ClientError):
    """The server refused the token, or wants one and none was given."""


class BadResponse(ClientError):
    """The server answered, but not with what the API promises: not JSON, not an event stream, a wrong shape."""


class APIError(ClientError):
    """The server answered with an error: `status`, its `error` and `detail`."""

    def __init__(self, message: str, status: int, error: str, detail: Any = None) -> None:
        super().__init__(message, status, detail)
        self.error = error
