"""The SDK's exceptions. Every failure of a call surfaces as a `NannError` subclass.

The underlying tritonclient / gRPC exception is kept as `__cause__` for debugging, but is never raised
to the caller directly.
"""
from __future__ import annotations

from typing import Optional

__all__ = [
    "NannError",
    "InvalidRequestError",
    "UnavailableError",
    "OverloadedError",
    "RequestTimeoutError",
    "ServerError",
]


class NannError(Exception):
    """Base class of every error raised by `nann_client`.

    `status` is the gRPC status name reported by the server (e.g. ``"INVALID_ARGUMENT"``), or None for
    errors detected on the client side. `server_message` is the server's error text exactly as received
    (None for client-side errors); the exception's own message drops Triton's ``"in ensemble 'nann', "``
    wrapper of an ensemble step's error.
    """

    server_message: Optional[str] = None

    def __init__(self, message: str, *, status: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class InvalidRequestError(NannError, ValueError):
    """The request was rejected as invalid (client-side validation, or gRPC INVALID_ARGUMENT).

    For server-side rejections the message is the server's message, verbatim (e.g.
    ``"unknown item ids: 123, 456"``), except that Triton's ``"in ensemble 'nann', "`` wrapper is removed;
    `server_message` holds the server's text exactly as received (None for client-side checks).
    Never retried.
    """


class UnavailableError(NannError, ConnectionError):
    """The server could not be reached (connection refused, gRPC UNAVAILABLE) after all retries.

    The message names the URL; `attempts` says how many attempts were made.
    """

    def __init__(self, message: str, *, url: str, attempts: int, status: Optional[str] = "UNAVAILABLE") -> None:
        super().__init__(message, status=status)
        self.url = url
        self.attempts = attempts


class OverloadedError(UnavailableError):
    """The server is past its capacity and refused the request at once (gRPC UNAVAILABLE from the bounded queues of
    its dynamic batchers: Triton's "Exceeds maximum queue size", or "Request timeout expired" where a queue timeout
    is configured). Not retried: an overloaded server is helped by the caller's fallback, not by more requests; the
    message names the URL and Triton's reason.
    """


class RequestTimeoutError(NannError, TimeoutError):
    """The call did not complete within its timeout (gRPC DEADLINE_EXCEEDED). Not retried."""


class ServerError(NannError):
    """Any other server-side failure (unknown model, internal error, ...). The server's message is kept."""
