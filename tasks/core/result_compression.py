"""Result compression above a threshold, in Celery's own self-describing format (a marker, the
codec, the body), so any stock Celery reader decodes what JobQL's backends store and small
results cost nothing; Celery's ``result_compression`` compresses every result."""

from __future__ import annotations

from typing import Any

from celery.backends.base import compress_payload

# Keys of JobQL's own in the Celery configuration, read by the backends below.
COMPRESSION_KEY = "jobql_result_compression"
THRESHOLD_KEY = "jobql_result_compression_threshold"


class ThresholdCompression:
    """``encode`` compresses only payloads above the configured size.

    Celery's own compression (``self.compression``) stays off; its public ``encode`` and
    ``compress_payload`` do the work, and its ``decode`` reads either form.
    """

    app: Any
    compression: str | None

    def _setup_compression(self) -> None:
        conf = self.app.conf
        method = conf.get(COMPRESSION_KEY) or None
        self._method = method if method and method != "none" else None
        self._threshold = int(conf.get(THRESHOLD_KEY) or 0)
        self.compression = None

    def encode(self, data: Any) -> Any:
        payload = super().encode(data)  # type: ignore[misc]
        if self._method and len(payload) > self._threshold:
            payload = compress_payload(payload, self._method)
        return payload
