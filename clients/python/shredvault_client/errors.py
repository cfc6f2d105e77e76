"""Typed errors built from the vault's ``application/problem+json`` answers.

Every error the daemon returns is ``{"type", "title", "status", "detail"}`` (RFC 9457).
``detail`` names fields, record ids and limits; the vault never puts record data, subjects or
tokens in it, and neither does this module: an error's ``str()`` is built only from the answer.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional


class VaultError(Exception):
    """Any error answer from the vault (or a transport failure, with ``status`` 0)."""

    #: The HTTP status this class stands for (0: no answer).
    status_code = 0

    def __init__(self, status: int, title: str = "", detail: str = "",
                 type: str = "", headers: Optional[Dict[str, str]] = None) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.headers = dict(headers or {})
        super().__init__(self.__str__())

    def __str__(self) -> str:
        head = f"{self.status} {self.title}".strip() if self.status else "no answer"
        return f"{head}: {self.detail}" if self.detail else head

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, type={self.type!r}, detail={self.detail!r})"

    @classmethod
    def from_response(cls, status: int, body: bytes, headers: Optional[Dict[str, str]] = None) -> "VaultError":
        """The error for an answer: its problem+json fields when it has them."""
        problem: Dict[str, Any] = {}
        try:
            decoded = json.loads(body.decode("utf-8")) if body else {}
            if isinstance(decoded, dict):
                problem = decoded
        except (UnicodeDecodeError, ValueError):
            pass
        return cls.from_problem(problem, status=status, headers=headers)

    @classmethod
    def from_problem(cls, problem: Dict[str, Any], status: Optional[int] = None,
                     headers: Optional[Dict[str, str]] = None) -> "VaultError":
        """The error for a problem object (a whole answer, or one item of a batch)."""
        code = status if status is not None else problem.get("status")
        if not isinstance(code, int):
            code = 0
        klass = _BY_STATUS.get(code, InternalError if code >= 500 else VaultError)
        def text(key: str) -> str:
            value = problem.get(key)
            return value if isinstance(value, str) else ""
        return klass(code, title=text("title"), detail=text("detail"), type=text("type"), headers=headers)


class BadRequest(VaultError):
    """400: malformed JSON, an unknown or missing field, a bad value, duration or time."""
    status_code = 400


class Unauthorized(VaultError):
    """401: the token is missing, malformed, unknown or revoked."""
    status_code = 401


class Forbidden(VaultError):
    """403: the token's role may not use this route (an agent deleting, an operator reading)."""
    status_code = 403


class NotFound(VaultError):
    """404: the record is unknown, another tenant's, expired or erased (the vault does not say which)."""
    status_code = 404


class MethodNotAllowed(VaultError):
    """405: the path exists, the method does not."""
    status_code = 405


class Conflict(VaultError):
    """409: a legal hold blocks the operation (nothing changed), or the tenant already exists."""
    status_code = 409


class TooLarge(VaultError):
    """413: the request body is larger than the daemon's limit."""
    status_code = 413


class Refused(VaultError):
    """422: well-formed but refused by policy (retention above what the policy allows, a past ``until``)."""
    status_code = 422


class TooManyRequests(VaultError):
    """429: too many failed authentications from this client; see ``retry_after``."""
    status_code = 429

    @property
    def retry_after(self) -> Optional[int]:
        value = self.headers.get("retry-after")
        return int(value) if value and value.isdigit() else None


class InternalError(VaultError):
    """500 (or any 5xx without its own class): stored data failed authentication, or an internal error."""
    status_code = 500


class Unavailable(VaultError):
    """503: the vault is shutting down, or storage is full; nothing was written."""
    status_code = 503


class TransportError(VaultError):
    """The daemon could not be reached, or its answer was cut or malformed."""

    def __init__(self, detail: str) -> None:
        super().__init__(0, title="", detail=detail)


_BY_STATUS = {c.status_code: c for c in (BadRequest, Unauthorized, Forbidden, NotFound, MethodNotAllowed,
                                         Conflict, TooLarge, Refused, TooManyRequests, InternalError, Unavailable)}
