"""What every later step of ``/graphql`` needs to know of a request's headers, read in one pass
when the request arrives and kept in its ASGI scope: its id, its transport, the media type it
accepts, its size and content type, its credential and whether it was preflighted. The
pipeline, the view and the metrics read this instead of scanning the headers again.
"""

from __future__ import annotations

import itertools
import re
import secrets
from dataclasses import dataclass

from starlette.types import Scope

HEAD = "jobql.head"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_WS_PROTOCOLS = ("graphql-transport-ws", "graphql-ws")
_PREFLIGHT_HEADERS = (b"x-apollo-operation-name", b"apollo-require-preflight")
# Request ids: this process's random prefix and a counter, no system call per request
# (uuid4 reads the OS's random source every time).
_PROCESS_TAG = secrets.token_hex(4)
_numbers = itertools.count(1)


@dataclass(slots=True)
class RequestHead:
    request_id: str
    # http, multipart, sse, graphql-transport-ws, graphql-ws: named in metrics and logs
    transport: str
    # The client accepts application/graphql-response+json (and so its status codes).
    graphql_response: bool
    # -1 without a Content-Length (a chunked body is counted as it arrives instead)
    content_length: int
    content_type: bytes | None
    credential: str | None
    # Sent a header a browser cannot send cross-site without a CORS preflight.
    preflighted: bool
    # A GET without an operation: GraphiQL's page, static, needing neither check.
    ide: bool

    @property
    def streams(self) -> bool:
        """A subscription over multipart/mixed or SSE: long-lived, answered as it goes."""
        return self.transport in ("multipart", "sse")


def read_head(scope: Scope) -> RequestHead:
    """The head of an HTTP request or WebSocket upgrade, stored in ``scope[HEAD]``."""
    given: str | None = None
    accept = b""
    length = -1
    content_type: bytes | None = None
    credential: str | None = None
    preflighted = False
    for name, value in scope["headers"]:
        if name == b"accept":
            accept = value
        elif name == b"content-length":
            length = int(value) if value.isdigit() else 1 << 62
        elif name == b"content-type":
            content_type = value
        elif name == b"authorization":
            credential = value.decode("latin-1")
        elif name == b"x-request-id":
            given = value.decode("latin-1")
        elif name in _PREFLIGHT_HEADERS and value:
            preflighted = True
    if scope["type"] == "websocket":
        offered = scope.get("subprotocols") or ()
        transport = next((p for p in offered if p in _WS_PROTOCOLS), "websocket")
    elif b"multipart/mixed" in accept:
        transport = "multipart"
    elif b"text/event-stream" in accept:
        transport = "sse"
    else:
        transport = "http"
    query_string: bytes = scope.get("query_string", b"")
    head = RequestHead(
        request_id=given if given and _SANE_ID.fullmatch(given) else _new_id(),
        transport=transport,
        graphql_response=b"application/graphql-response+json" in accept,
        content_length=length,
        content_type=content_type,
        credential=credential,
        preflighted=preflighted,
        ide=scope.get("method") == "GET"
        and not (b"query=" in query_string or b"extensions=" in query_string),
    )
    scope[HEAD] = head
    return head


def _new_id() -> str:
    return f"{_PROCESS_TAG}-{next(_numbers)}"
