"""A WebSocket's credential, watched for its end: a socket lives as long as the credential it was
signed in with, not as long as the client keeps it open. A token's socket ends when the token
expires (a timer at ``exp`` plus the leeway); a socket signed in by the host application's
session (``external``: a Django login) ends once that session does (a logout, a changed
password, a user made inactive), found by signing the socket in again every
``JOBQL_SESSION_RECHECK_SECONDS``: one task per process re-checks every such socket, a session
that several sockets share once, each read off the event loop (the sign-in reads Django's
session store in Django's thread). The socket's protocol handler says how it ends
(:mod:`gql.http.ws_handlers`: close code 4403).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gql.services.auth import Authenticator, Principal

logger = logging.getLogger(__name__)

End = Callable[[str], Awaitable[None]]
"""Ends a socket whose credential ended, with the reason (``the token expired``)."""

EXPIRED = "the token expired"
SESSION_ENDED = "the session ended"


class CredentialWatch:
    """One socket's watch: its token's expiry timer and its place among the sessions to
    re-check. :meth:`stop` when the socket closes."""

    __slots__ = ("_checks", "_end", "_ending", "_expires_at", "_timer")

    def __init__(
        self,
        principal: Principal,
        scope: Mapping[str, Any],
        authenticator: Authenticator,
        end: End,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._end = end
        self._ending: asyncio.Future[None] | None = None
        self._expires_at = principal.expires_at
        self._timer: asyncio.TimerHandle | None = None
        if self._expires_at is not None:
            self._timer = loop.call_later(max(0.0, self._expires_at - time.time()), self._ring)
        self._checks: SessionChecks | None = None
        if principal.external:
            self._checks = _checks_of(loop, authenticator)
            self._checks.add(self, scope, principal)

    def _ring(self) -> None:
        assert self._expires_at is not None
        # The loop's clock and the wall clock may differ by a little: end only once expired.
        left = self._expires_at - time.time()
        if left > 0:
            self._timer = asyncio.get_running_loop().call_later(max(0.01, left), self._ring)
            return
        self._timer = None
        self.end(EXPIRED)

    def end(self, reason: str) -> None:
        """End the socket (once, in a task of its own: the caller may be a timer)."""
        if self._ending is None:
            self._ending = asyncio.ensure_future(self._end(reason))
            self._ending.add_done_callback(_retrieved)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._checks is not None:
            self._checks.discard(self)
            self._checks = None


def _retrieved(ending: asyncio.Future[None]) -> None:
    if not ending.cancelled() and (error := ending.exception()) is not None:
        logger.warning("could not close a socket whose credential ended: %r", error)


class SessionChecks:
    """Every session-signed socket of one event loop, signed in again each interval."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator
        self._watches: dict[CredentialWatch, tuple[Mapping[str, Any], Principal]] = {}
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._watches)

    def add(self, watch: CredentialWatch, scope: Mapping[str, Any], principal: Principal) -> None:
        self._watches[watch] = (scope, principal)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._check_forever(), name="jobql-session-checks")

    def discard(self, watch: CredentialWatch) -> None:
        self._watches.pop(watch, None)

    async def _check_forever(self) -> None:
        while self._watches:
            await asyncio.sleep(self._authenticator.session_recheck_seconds)
            await self.check()

    async def check(self) -> None:
        """Sign each session in again (once for the sockets that share it); end the sockets
        of a session that ended. A sign-in that fails (its store does not answer) ends
        nothing: the next round asks again."""
        sessions: dict[tuple[bytes, ...], list[CredentialWatch]] = {}
        for watch, (scope, principal) in self._watches.items():
            sessions.setdefault(_session_of(scope, principal), []).append(watch)
        for watches in sessions.values():
            known = self._watches.get(watches[0])
            if known is None:
                continue  # its socket closed while an earlier session was read
            scope, principal = known
            try:
                signed_in = await self._authenticator.still_signed_in(scope, principal)
            except Exception:
                logger.warning("could not sign a session's sockets in again", exc_info=True)
                continue
            if not signed_in:
                for watch in watches:
                    watch.end(SESSION_ENDED)


def _session_of(scope: Mapping[str, Any], principal: Principal) -> tuple[bytes, ...]:
    """What a sign-in reads of a socket: sockets that agree on it share one re-check."""
    headers = dict(scope.get("headers") or ())
    parts = (headers.get(b"cookie", b""), headers.get(b"origin", b""), headers.get(b"host", b""))
    return (*parts, principal.owner.encode(), b"1" if principal.admin else b"0")


# Per event loop (a test suite runs many) and authenticator: the sockets to re-check.
_checks: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[Authenticator, SessionChecks]
] = weakref.WeakKeyDictionary()


def _checks_of(loop: asyncio.AbstractEventLoop, authenticator: Authenticator) -> SessionChecks:
    by_authenticator = _checks.setdefault(loop, {})
    checks = by_authenticator.get(authenticator)
    if checks is None:
        checks = by_authenticator[authenticator] = SessionChecks(authenticator)
    return checks
