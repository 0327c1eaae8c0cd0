"""A socket's credential watched for its end, in process: the token's timer, and the session
re-check through a real Authenticator and a host sign-in that reads a session table (the
same shape as gql.django's, whose live story is in examples/django/tests)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from gql.http.credentials import EXPIRED, SESSION_ENDED, CredentialWatch, _checks_of
from gql.services.auth import Authenticator, Principal
from tasks.core.settings import Settings


class Sessions:
    """The host application's signed-in sessions, by cookie, and how often it was asked."""

    def __init__(self) -> None:
        self.users: dict[bytes, str] = {}
        self.reads = 0

    async def sign_in(self, scope: Mapping[str, Any]) -> Principal | None:
        self.reads += 1
        await asyncio.sleep(0)  # a store read, off the loop in gql.django
        user = self.users.get(dict(scope.get("headers") or ()).get(b"cookie", b""))
        return Principal(user) if user else None


def _authenticator(sessions: Sessions, recheck: float = 30.0) -> Authenticator:
    settings = Settings(env="test", auth_mode="external", session_recheck_seconds=recheck)
    return Authenticator(settings.auth, sessions.sign_in)


def _scope(cookie: bytes) -> dict[str, Any]:
    return {"type": "websocket", "headers": [(b"cookie", cookie), (b"host", b"api")]}


class Socket:
    """Records why it was ended."""

    def __init__(self) -> None:
        self.ended: list[str] = []
        self.closed = asyncio.Event()

    async def end(self, reason: str) -> None:
        self.ended.append(reason)
        self.closed.set()


async def _signed_in(auth: Authenticator, cookie: bytes, socket: Socket) -> CredentialWatch:
    principal = await auth.authenticate_scope(_scope(cookie), None)
    assert principal.external
    return CredentialWatch(principal, _scope(cookie), auth, socket.end)


async def test_a_session_is_read_once_for_its_sockets_and_a_logout_ends_them_alone() -> None:
    sessions = Sessions()
    sessions.users = {b"sid=a": "alice", b"sid=b": "bob"}
    auth = _authenticator(sessions)
    alices, bobs = [Socket(), Socket()], Socket()
    watches = [await _signed_in(auth, b"sid=a", s) for s in alices]
    watches.append(await _signed_in(auth, b"sid=b", bobs))
    checks = _checks_of(asyncio.get_running_loop(), auth)
    sessions.reads = 0

    await checks.check()
    assert sessions.reads == 2, "one read per session, not per socket"
    assert [s.ended for s in (*alices, bobs)] == [[], [], []]

    del sessions.users[b"sid=a"]  # alice logs out
    await checks.check()
    await asyncio.sleep(0)  # each socket ends in a task of its own
    assert [s.ended for s in alices] == [[SESSION_ENDED], [SESSION_ENDED]]
    assert bobs.ended == []
    for watch in watches:
        watch.stop()
    assert len(checks) == 0


async def test_a_session_signing_in_someone_else_now_ends_the_socket() -> None:
    sessions = Sessions()
    sessions.users = {b"sid=a": "alice"}
    auth = _authenticator(sessions)
    socket = Socket()
    watch = await _signed_in(auth, b"sid=a", socket)
    sessions.users[b"sid=a"] = "mallory"
    await _checks_of(asyncio.get_running_loop(), auth).check()
    await asyncio.sleep(0)
    assert socket.ended == [SESSION_ENDED]
    watch.stop()


async def test_sessions_are_checked_again_every_interval_until_no_socket_is_left() -> None:
    sessions = Sessions()
    sessions.users = {b"sid=a": "alice"}
    auth = _authenticator(sessions, recheck=0.05)
    socket = Socket()
    watch = await _signed_in(auth, b"sid=a", socket)
    await asyncio.sleep(0.18)
    assert sessions.reads - 1 >= 2 and socket.ended == []  # signed in again, and again
    del sessions.users[b"sid=a"]
    logged_out = time.monotonic()
    await asyncio.wait_for(socket.closed.wait(), 1)
    assert time.monotonic() - logged_out < 0.05 + 0.1  # within an interval (and the read)
    watch.stop()
    reads = sessions.reads
    await asyncio.sleep(0.12)
    assert sessions.reads == reads, "no socket left: nothing is read"


async def test_a_token_ends_its_socket_when_it_expires_and_a_stopped_watch_never_does() -> None:
    auth = Authenticator(Settings(env="test", auth_mode="jwt", jwt_secret="s" * 32).auth)
    expiring, closed = Socket(), Socket()
    expires_at = time.time() + 0.1
    watch = CredentialWatch(Principal("alice", expires_at=expires_at), {}, auth, expiring.end)
    stopped = CredentialWatch(Principal("bob", expires_at=expires_at), {}, auth, closed.end)
    stopped.stop()
    await asyncio.wait_for(expiring.closed.wait(), 1)
    assert expires_at <= time.time() < expires_at + 0.1
    assert expiring.ended == [EXPIRED]
    await asyncio.sleep(0.05)
    assert closed.ended == []
    watch.stop()
