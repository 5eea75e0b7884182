"""Error types that cross module boundaries, each mapping to one gRPC status.

The transport maps them to status codes (``fedsqueeze.server.servicer``); the
rest of the code raises them with a message a person can act on.
"""

from fedsqueeze.text import shown


class FedsqueezeError(Exception):
    """Base of the errors below."""


class PayloadError(FedsqueezeError, ValueError):
    """Malformed tensor stream or payload (INVALID_ARGUMENT).

    ``tensor`` names the offending tensor when there is one.
    """

    def __init__(self, message: str, tensor: str | None = None) -> None:
        super().__init__(f"tensor {shown(tensor)}: {message}" if tensor else message)
        self.tensor = tensor


class RoundStateError(FedsqueezeError):
    """A request for a round or task that is not open to the caller (FAILED_PRECONDITION)."""


class AuthenticationError(FedsqueezeError):
    """The call carries no valid credentials (UNAUTHENTICATED)."""


class PermissionDeniedError(FedsqueezeError):
    """Valid credentials, but for another identity than the one acted as (PERMISSION_DENIED)."""


class RateLimitError(FedsqueezeError):
    """Too many joins from one client, or too many clients (RESOURCE_EXHAUSTED)."""


class SessionError(FedsqueezeError):
    """Unknown or superseded session: the client must Join again (UNAUTHENTICATED)."""


class ConflictError(FedsqueezeError):
    """Another upload for the same task is in progress (ABORTED)."""


class StallError(FedsqueezeError):
    """An upload stopped making progress: it lost its turn and its task (DEADLINE_EXCEEDED)."""


class UnsupportedError(FedsqueezeError):
    """The federation's method cannot serve the caller the way it asks (e.g. through an edge aggregator)."""


class Stopped(Exception):
    """A participant was asked to stop while a call, a wait or its training was in progress."""
