"""The register of every place JobQL leans on a library's internals, in three kinds: a fix works
around a library bug (naming its upstream issue) and is always on; a speed-up earns its place on
a named bench figure and runs only while ``JOBQL_FAST_PATHS`` allows; the design entry is the
enqueue design's lean on Celery's message format. Each is checked at start-up, falling back
loudly to the stock behaviour, so an upgrade degrades instead of breaking. The touches live
beside their code (:mod:`gql.compat`, :mod:`tasks.worker`, :mod:`tasks.core.message_writer`);
this module imports no library.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

logger = logging.getLogger(__name__)

Kind = Literal["fix", "speed-up", "design"]


@dataclass
class Internal:
    """One use of a library internal, and what runs when it cannot be used."""

    name: str
    library: str
    verified: str  # the versions it was verified on, e.g. "graphql-core 3.3.2"
    fallback: str  # what runs instead: the library's stock behaviour
    kind: Kind
    # A fix: its upstream issue or PR. A speed-up: the bench figure it earns on. Design: why.
    why: str
    active: bool = False
    reason: str | None = None  # why it is off, when it is
    fallbacks: int = 0  # events that took the stock path although it is on
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_fallback(self) -> None:
        with self._lock:
            self.fallbacks += 1

    def as_dict(self) -> dict[str, object]:
        return {
            "active": self.active,
            "kind": self.kind,
            "why": self.why,
            "library": self.library,
            "verified": self.verified,
            "fallback": self.fallback,
            "reason": self.reason,
            "fallbacks": self.fallbacks,
        }


def fix(name: str, library: str, verified: str, fallback: str, *, upstream: str) -> Internal:
    """A library bug worked around: on whatever ``JOBQL_FAST_PATHS`` says."""
    return Internal(name, library, verified, fallback, "fix", upstream)


def speed_up(name: str, library: str, verified: str, fallback: str, *, figure: str) -> Internal:
    """A shortcut through an internal: on only while ``JOBQL_FAST_PATHS`` allows."""
    return Internal(name, library, verified, fallback, "speed-up", figure)


def design(name: str, library: str, verified: str, fallback: str, *, why: str) -> Internal:
    """How JobQL is built, leaning on an internal: on whatever ``JOBQL_FAST_PATHS`` says."""
    return Internal(name, library, verified, fallback, "design", why)


REGISTER: dict[str, Internal] = {}


class Switches(Protocol):
    """What decides whether a speed-up may run (the settings have both)."""

    @property
    def fast_paths(self) -> bool: ...

    @property
    def fast_paths_off(self) -> Sequence[str]: ...


def decide(internal: Internal, check: Callable[[], object], switches: Switches) -> bool:
    """Register ``internal`` and turn it on if the switches allow its kind and its ``check``
    passes; warn once why it is off."""
    REGISTER[internal.name] = internal
    if internal.kind == "speed-up" and not switches.fast_paths:
        internal.active, internal.reason = False, "JOBQL_FAST_PATHS=false"
        return False
    if internal.kind == "speed-up" and internal.name in switches.fast_paths_off:
        internal.active, internal.reason = False, "JOBQL_FAST_PATHS_OFF"
        return False
    try:
        check()
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        known = not internal.active and internal.reason == reason
        internal.active, internal.reason = False, reason
        if known:  # decided again (another app, another client): warned already
            return False
        logger.warning(
            "%s %r is off: %s no longer has the shape verified on %s (%s); using %s instead",
            internal.kind,
            internal.name,
            internal.library,
            internal.verified,
            internal.reason,
            internal.fallback,
        )
        return False
    internal.active, internal.reason = True, None
    return True


def report() -> dict[str, dict[str, object]]:
    """Every registered internal, for ``/health/stats``."""
    return {name: internal.as_dict() for name, internal in sorted(REGISTER.items())}
