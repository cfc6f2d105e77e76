"""A small ShredVault client over the daemon's Unix socket (or its loopback TCP listener).

Standard library only: ``http.client`` with a connection class that dials a Unix socket.
The bearer token comes from a file or as bytes; it is never taken from a command line or the
environment, never logged, and never part of an error's text.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any, Dict, Iterable, List, Optional, Union
from urllib.parse import quote, urlsplit

from .errors import TransportError, VaultError

BytesLike = Union[bytes, bytearray, memoryview]

#: Where scripts/serve puts the socket, relative to the repository.
DEFAULT_SOCKET = "data/shredvault.sock"


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client.HTTPConnection`` that connects to a Unix domain socket.

    The host name is only what goes into the ``Host`` header (the daemon ignores it), as for
    ``curl --unix-socket PATH http://vault/...``.
    """

    def __init__(self, socket_path: str, timeout: Optional[float] = 30.0) -> None:
        super().__init__("vault", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if self.timeout is not None:
                sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _read_token_file(path: Union[str, "os.PathLike[str]"]) -> bytearray:
    with open(path, "rb") as f:
        data = bytearray(f.read())
    # Token files end with a newline when written by scripts; nothing else is trimmed.
    while data and data[-1:] in (b"\n", b"\r"):
        del data[-1]
    return data


class VaultClient:
    """The vault's record and client-instruction routes for one token.

    >>> with VaultClient(socket_path="data/shredvault.sock", token_file="keys/demo-agent.token") as vault:
    ...     receipt = vault.write("cust-123", "personal", "phone", {"note": "asked about invoice 77"})
    ...     record = vault.read(receipt["id"])

    Exactly one of ``token`` (bytes-like) and ``token_file`` is given. ``socket_path``
    (default ``$SHREDVAULT_SOCKET``, else ``data/shredvault.sock``) or ``url`` (the loopback
    listener, ``http://127.0.0.1:PORT``) says where the daemon is. Every call opens one
    connection, sends one request and closes it: the daemon closes idle connections after its
    request timeout, so a client kept between calls never holds a dead one.
    """

    def __init__(self, *, token: Optional[BytesLike] = None,
                 token_file: Optional[Union[str, "os.PathLike[str]"]] = None,
                 socket_path: Optional[str] = None, url: Optional[str] = None,
                 timeout: Optional[float] = 30.0) -> None:
        if (token is None) == (token_file is None):
            raise ValueError("give exactly one of token (bytes-like) and token_file")
        if token is not None:
            if isinstance(token, str):
                raise TypeError("token must be bytes-like (bytes, bytearray, memoryview), or use token_file")
            if not isinstance(token, (bytes, bytearray, memoryview)):
                raise TypeError("token must be bytes-like (bytes, bytearray, memoryview)")
            self._token = bytearray(token)
        else:
            self._token = _read_token_file(token_file)  # type: ignore[arg-type]
        if not self._token or any(b < 0x21 or b > 0x7E for b in self._token):
            self.close()
            raise ValueError("the token must be printable ASCII without spaces")
        if url is not None and socket_path is not None:
            raise ValueError("give socket_path or url, not both")
        self._url = urlsplit(url) if url is not None else None
        if self._url is not None and (self._url.scheme != "http" or not self._url.hostname):
            raise ValueError("url must be http://HOST:PORT (the daemon's loopback listener)")
        self.socket_path = socket_path or os.environ.get("SHREDVAULT_SOCKET") or DEFAULT_SOCKET
        self.timeout = timeout

    # Lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """Overwrites the client's copy of the token (best effort: Python may hold other copies)."""
        token = getattr(self, "_token", None)
        if token is not None:
            for i in range(len(token)):
                token[i] = 0
            self._token = bytearray()

    def __enter__(self) -> "VaultClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self._url.geturl() if self._url is not None else self.socket_path
        return f"VaultClient({where!r}, token=<redacted>)"

    # Records -------------------------------------------------------------------------

    def write(self, subject: str, category: str, channel: str, data: Any,
              retention: Optional[str] = None) -> Dict[str, Any]:
        """Writes one record; returns ``{"id", "created_at", "expires_at"}`` once it is durable."""
        return self.request("POST", "/v1/records", _record_body(subject, category, channel, data, retention))

    def batch(self, records: Iterable[Dict[str, Any]]) -> List[Union[Dict[str, Any], VaultError]]:
        """Writes up to 1000 records in one request. Each result is a receipt, or the
        ``VaultError`` of that item alone (returned in its place, not raised)."""
        answer = self.request("POST", "/v1/records/batch", {"records": list(records)})
        results: List[Union[Dict[str, Any], VaultError]] = []
        for item in answer.get("results", []):
            if isinstance(item, dict) and isinstance(item.get("error"), dict):
                results.append(VaultError.from_problem(item["error"]))
            else:
                results.append(item)
        return results

    def read(self, record_id: str) -> Dict[str, Any]:
        """The decrypted record (``id, subject, category, channel, created_at, expires_at, version, data``)."""
        return self.request("GET", "/v1/records/" + _path_id(record_id))

    def correct(self, record_id: str, data: Any) -> Dict[str, Any]:
        """Replaces the record's data: a new version under a new key; returns the new version."""
        return self.request("PUT", "/v1/records/" + _path_id(record_id), {"data": data})

    def delete(self, record_id: str) -> None:
        """Deletes one record (``admin``)."""
        self.request("DELETE", "/v1/records/" + _path_id(record_id))

    def records(self, subject: str) -> List[Dict[str, Any]]:
        """Every readable record of a subject (the agent's listing)."""
        return self.request("POST", "/v1/subjects/records", {"subject": subject})["records"]

    # Client instructions (admin) -----------------------------------------------------------

    def export(self, subject: str) -> List[Dict[str, Any]]:
        """The disclosure export of a subject's records (``admin``; audited as a disclosure)."""
        return self.request("POST", "/v1/subjects/records", {"subject": subject, "export": True})["records"]

    def erase(self, subject: str, reference: Optional[str] = None) -> Dict[str, Any]:
        """Erases every record of a subject at once; returns ``{"erased", "receipt"}``.
        Raises ``Conflict`` (nothing erased) when a legal hold covers the subject."""
        body: Dict[str, Any] = {"subject": subject}
        if reference is not None:
            body["reference"] = reference
        return self.request("POST", "/v1/subjects/erase", body)

    def health(self) -> bool:
        """True when the daemon answers ``GET /healthz``."""
        return self.request("GET", "/healthz", authenticate=False).get("status") == "ok"

    # Any route -----------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, *, authenticate: bool = True) -> Any:
        """One request to any route of openapi.yaml; the decoded JSON answer (None for 204).
        Raises the ``VaultError`` subclass of the answer's status."""
        payload = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        conn = self._connection()
        try:
            try:
                conn.putrequest(method, path, skip_accept_encoding=True)
                for name, value in headers.items():
                    conn.putheader(name, value)
                if authenticate:
                    conn.putheader("Authorization", b"Bearer " + bytes(self._token))
                conn.putheader("Content-Length", str(len(payload or b"")))
                conn.endheaders(payload)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as e:
                raise TransportError(f"{type(e).__name__} talking to {self._where()}") from None
            answer_headers = {k.lower(): v for k, v in response.getheaders()}
            if response.status >= 400:
                raise VaultError.from_response(response.status, data, answer_headers)
            if response.status == 204 or not data:
                return None
            if not answer_headers.get("content-type", "").startswith("application/json"):
                return data.decode("utf-8")
            try:
                return json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise TransportError(f"malformed JSON answer from {self._where()}") from None
        finally:
            conn.close()

    def _connection(self) -> http.client.HTTPConnection:
        if self._url is not None:
            return http.client.HTTPConnection(self._url.hostname, self._url.port or 80, timeout=self.timeout)
        return UnixHTTPConnection(self.socket_path, timeout=self.timeout)

    def _where(self) -> str:
        return self._url.geturl() if self._url is not None else self.socket_path


def _record_body(subject: str, category: str, channel: str, data: Any, retention: Optional[str]) -> Dict[str, Any]:
    body: Dict[str, Any] = {"subject": subject, "category": category, "channel": channel, "data": data}
    if retention is not None:
        body["retention"] = retention
    return body


def _path_id(record_id: str) -> str:
    # Ids are 26 Crockford base32 characters; quoting keeps anything else inside one segment.
    return quote(record_id, safe="")


def record(subject: str, category: str, channel: str, data: Any, retention: Optional[str] = None) -> Dict[str, Any]:
    """One item for ``VaultClient.batch``."""
    return _record_body(subject, category, channel, data, retention)
