"""The register of fast paths: every place JobQL leans on a library's internals.

Each fast path names the library versions it was verified on, checks at start-up that the
internal it relies on still has the expected shape, and otherwise falls back to the
library's stock behaviour with one warning in the log. ``JOBQL_FAST_PATHS=false`` turns
every one off. ``/health/stats`` reports what is on, and why anything is off.

This module holds only the register (no library is imported here): the worker-side fast
paths live beside it in ``tasks/``, the API-side ones in ``gql/compat/register.py``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class FastPath:
    """One use of a library internal, and what happens when it cannot be used."""

    name: str
    library: str
    verified: str  # the versions it was verified on, e.g. "graphql-core 3.3.2"
    fallback: str  # what runs instead: the library's stock behaviour
    # A fix of a library bug rather than a shortcut: JOBQL_FAST_PATHS leaves it on, since
    # the stock behaviour is the bug. Only its own check failing turns it off.
    fix: bool = False
    active: bool = False
    reason: str | None = None  # why it is off, when it is
    fallbacks: int = 0  # events that took the stock path although the fast path is on
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_fallback(self) -> None:
        with self._lock:
            self.fallbacks += 1

    def as_dict(self) -> dict[str, object]:
        return {
            "active": self.active,
            "kind": "fix" if self.fix else "fast path",
            "library": self.library,
            "verified": self.verified,
            "fallback": self.fallback,
            "reason": self.reason,
            "fallbacks": self.fallbacks,
        }


REGISTER: dict[str, FastPath] = {}


def enable(path: FastPath, check: Callable[[], object], *, allowed: bool) -> bool:
    """Turn ``path`` on if allowed and its ``check`` passes; warn once why it is off."""
    REGISTER[path.name] = path
    if not allowed and not path.fix:
        path.active, path.reason = False, "JOBQL_FAST_PATHS=false"
        return False
    try:
        check()
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        known = not path.active and path.reason == reason
        path.active, path.reason = False, reason
        if known:  # decided again (another app, another client): warned already
            return False
        logger.warning(
            "fast path %r is off: %s no longer has the shape verified on %s (%s); using %s instead",
            path.name,
            path.library,
            path.verified,
            path.reason,
            path.fallback,
        )
        return False
    path.active, path.reason = True, None
    return True


def report() -> dict[str, dict[str, object]]:
    """Every registered fast path, for ``/health/stats``."""
    return {name: path.as_dict() for name, path in sorted(REGISTER.items())}
