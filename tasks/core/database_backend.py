"""Celery's database result backend as every reader of the table must use it: a stored row is
decoded with the configured serializer only, never unpickled (a fix: Celery 5.7 unpickles a row
that looks like a pickle), and large results are compressed as the Redis backend's are. Its own
module because Celery's imports SQLAlchemy, which only a database result backend installs."""

from __future__ import annotations

import inspect
from typing import Any

from celery.backends.database import DatabaseBackend as CeleryDatabaseBackend

from tasks.core import compat
from tasks.core.result_compression import ThresholdCompression


class DatabaseBackend(ThresholdCompression, CeleryDatabaseBackend):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._setup_compression()

    def _decode_stored_result(self, payload: Any) -> Any:
        """Decoded with the configured serializer only: never unpickled.

        Overrides a private method of Celery's (registered as a fix in ``tasks.core.compat``:
        its start-up check warns if the method is gone, and the fix with it).
        """
        return None if payload is None else self.decode(bytes(payload))


NO_PICKLE = compat.fix(
    "celery.database_backend_no_pickle",
    "celery",
    "celery 5.7.0",
    "Celery's own decoding of stored rows (which unpickles legacy-looking rows)",
    upstream="Celery's DatabaseBackend unpickles a stored row whose first byte looks like a "
    "pickle, for rows from before celery/celery#3025 (not reported yet)",
)


def check_no_pickle() -> None:
    method = getattr(CeleryDatabaseBackend, "_decode_stored_result", None)
    if method is None or list(inspect.signature(method).parameters) != ["self", "payload"]:
        raise LookupError("DatabaseBackend._decode_stored_result(payload) is gone")
