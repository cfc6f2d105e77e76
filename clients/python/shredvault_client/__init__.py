"""ShredVault client (standard library only): records, batches, erasure and export over the
daemon's Unix socket. See README.md beside this package."""

from .client import DEFAULT_SOCKET, UnixHTTPConnection, VaultClient, record
from .errors import (BadRequest, Conflict, Forbidden, InternalError, MethodNotAllowed, NotFound, Refused,
                     TooLarge, TooManyRequests, TransportError, Unauthorized, Unavailable, VaultError)

__all__ = [
    "VaultClient", "UnixHTTPConnection", "record", "DEFAULT_SOCKET",
    "VaultError", "BadRequest", "Unauthorized", "Forbidden", "NotFound", "MethodNotAllowed", "Conflict",
    "TooLarge", "Refused", "TooManyRequests", "InternalError", "Unavailable", "TransportError",
]
__version__ = "0.1.0"
