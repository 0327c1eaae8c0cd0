"""The format version of what JobQL writes: every job and workflow record carries it in a one-byte
field, every Celery message JobQL sends in a header, so a reader knows which release's shape it
holds. Readers take the current format and the one before it (a rolling upgrade from the previous
release mixes both); meeting the older one is said once per process and kind at INFO, a newer one
(a downgrade) once at WARNING, and both are read as far as this code can.

Format 1 is everything written before versioning (no field, no header); format 2 adds the field
and the header and nothing else. ``jobql migrate`` (:mod:`gql.ops.migrate`) rewrites what format 1
left.
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)

RECORD_FORMAT = 2
# What a record's field holds: the format as text, so a reader compares strings.
CURRENT = str(RECORD_FORMAT)
# The field of a job or workflow record; one byte, as every byte of a record is paid per job.
FORMAT_FIELD = "v"
# The header of a Celery message JobQL sends (the API's own, Celery's producer, beat's).
FORMAT_HEADER = "jobql_format"

# The release that first wrote each format, for the log lines and the docs.
RELEASES = {1: "0.9.0 and earlier", 2: "0.10.0"}

_said: set[tuple[str, int | str]] = set()
_lock = threading.Lock()


def format_of(value: object) -> int | None:
    """The format a field or header holds: 1 when absent, None when it is not a number."""
    if value is None or value == "":
        return 1
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError):
        return None


def met(kind: str, value: object) -> int | None:
    """Note a ``kind`` of thing (``job records``, ``workflow records``, ``task messages``) of
    the format ``value`` says; call it only when ``value`` is not :data:`CURRENT`. Returns the
    format, None when unreadable; logs once per process, kind and format."""
    found = format_of(value)
    if found == RECORD_FORMAT:
        return found
    key = (kind, found if found is not None else str(value)[:20])
    with _lock:
        if key in _said:
            return found
        _said.add(key)
    if found is not None and found < RECORD_FORMAT:
        logger.info(
            "%s of format %d (%s, before versioning) are read as such; `jobql migrate` rewrites "
            "them",
            kind,
            found,
            RELEASES.get(found, "an older release"),
        )
    elif found is not None:
        logger.warning(
            "%s of format %d, written by a JobQL newer than this one (%s, format %d): a "
            "downgrade; they are read as far as this version can, and fields it does not know "
            "are ignored",
            kind,
            found,
            RELEASES[RECORD_FORMAT],
            RECORD_FORMAT,
        )
    else:
        logger.warning(
            "%s with an unreadable format %r are read as format %d", kind, value, RECORD_FORMAT
        )
    return found


def forget() -> None:
    """Say each kind again (tests)."""
    with _lock:
        _said.clear()
