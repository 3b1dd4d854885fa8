"""Transport failures as provider errors: the one mapping every transport uses.

`connecting` marks failures before any response arrived: only those may be retried on
the same deployment (a stale pooled connection, a refused connect).
"""

from __future__ import annotations

from gateway.errors import ProviderError, UpstreamTimeoutError, UpstreamUnavailableError

# What any transport may raise besides its library's own errors.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, ConnectionError, OSError)


def mapped(exc: BaseException, connecting: bool = False) -> ProviderError:
    """A timeout (aiohttp's and asyncio's included: both are TimeoutError) or not."""
    if isinstance(exc, TimeoutError):
        return UpstreamTimeoutError("The upstream did not answer in time.")
    error = UpstreamUnavailableError(f"Could not reach the upstream ({type(exc).__name__}).")
    error.during_connect = connecting
    return error
