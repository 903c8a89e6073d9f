"""The request handler frame and the log of requests a test inspects, for HTTP API stand-ins
(today only the KFP REST stand-in: Kubernetes runs for real, see tests/cluster).

A stand-in routes every request through one ``_handle`` method and records requests itself,
so the verbs, the parsing of the request line and the writing of a reply live here once.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit


@dataclass(frozen=True)
class RawRequest:
    method: str
    path: str
    #: The last value of each query parameter.
    query: dict[str, str]
    #: Lower-cased names (HTTP header names are case-insensitive).
    headers: dict[str, str]
    body: bytes


class StandInHandler(BaseHTTPRequestHandler):
    """Sends every verb to :meth:`_handle`, which a stand-in's handler defines."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest output clean; the stand-ins record requests instead

    def _handle(self) -> None:
        raise NotImplementedError

    def read_request(self) -> RawRequest:
        url = urlsplit(self.path)
        return RawRequest(
            method=self.command,
            path=unquote(url.path),
            query=dict(parse_qsl(url.query, keep_blank_values=True)),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=self.rfile.read(int(self.headers.get("Content-Length") or 0)),
        )

    def reply(
        self,
        status: HTTPStatus | int,
        data: bytes,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


class _Request(Protocol):
    method: str
    path: str


R = TypeVar("R", bound=_Request)


class RequestLog(Generic[R]):
    """Every request a stand-in received, for tests to inspect (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._requests: list[R] = []

    def record(self, request: R) -> None:
        with self._lock:
            self._requests.append(request)

    @property
    def requests(self) -> list[R]:
        """Every request received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, method: str, path: str) -> list[R]:
        """The requests with this method and exact path (e.g. ``/apis/v2beta1/runs``)."""
        return [r for r in self.requests if r.method == method and r.path == path]
