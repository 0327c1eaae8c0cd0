"""Webhooks as API and worker both know them: Standard Webhooks (standardwebhooks.com)
signing, the URL check that keeps a caller from making JobQL probe the internal network, and
the delivery task's name and arguments. Plain functions; the delivery itself is the worker's
(``tasks.worker.webhooks``)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import time
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from tasks.core import records

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,`` and the base64 HMAC-SHA256 of
    ``id.timestamp.body``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def check_scheme(url: str) -> str:
    """The URL's host name; raises ValueError for anything but an http(s) URL with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return parts.hostname


def refused_address(addresses: Iterable[str], allowed_networks: Iterable[str]) -> str | None:
    """The first address a webhook may not reach (private, loopback, link-local, reserved,
    multicast or unspecified, outside ``allowed_networks``), or None when all may be."""
    allowed = [ipaddress.ip_network(net, strict=False) for net in allowed_networks]
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        internal = (
            address.is_private
            or address.is_loopback
            or address.is_link_local
            or address.is_reserved
            or address.is_multicast
            or address.is_unspecified
        )
        if internal and not any(address in net for net in allowed):
            return str(address)
    return None


DELIVERY_TASK = "jobql.deliver_webhook"


# Every event a webhook may ask for: the terminal states, or every change of state.
ANY_CHANGE = "ANY"


def deliveries_key(kind: str, record_id: str) -> str:
    return f"{records.PREFIX}:deliveries:{kind}:{record_id}"


def delivery_kwargs(kind: str, record: str) -> dict[str, Any]:
    """The delivery task's arguments for one event: ``record`` is the JSON record."""
    return {
        "kind": kind,
        "record": json.loads(record),
        "message_id": f"msg_{uuid.uuid4().hex}",
        "first_at": time.time(),
    }
