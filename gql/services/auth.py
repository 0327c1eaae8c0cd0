"""Who is asking, checked once per request or WebSocket: a bearer JWT, an API key, or whoever the
host application signed in (``external``: a Django session, see :mod:`gql.django`). The verified
subject is the owner every read, list, stream and write is scoped by. Key objects are loaded
once, a JWKS is fetched off the event loop and kept, and a verified token is remembered until it
expires, so a client sending one token with every request pays one signature check.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from gql.services.errors import Unauthenticated
from tasks.core.settings import AuthSettings

logger = logging.getLogger(__name__)

# Every caller's owner when authentication is off (development only).
ANONYMOUS = "anonymous"

# Owners become parts of Redis keys (``jobql:idem:<owner>:<key>``, ``{owner}`` hash tags):
# a separator or a brace in one could make two owners' keys meet.
_OWNER = re.compile(r"[^\s:{}]{1,200}")
_REMEMBERED_TOKENS = 10_000
# A JWKS is fetched again for an unknown `kid` at most this often (a stream of made-up
# kids must not turn into a stream of fetches).
_JWKS_REFRESH_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: the owner of what it creates, maybe an admin."""

    owner: str
    admin: bool = False
    expires_at: float | None = None  # epoch seconds, for a token
    # Signed in by the host application (a Django session), which may end before a
    # WebSocket does: such a socket is signed in again now and then (gql.http.credentials).
    external: bool = False

    @property
    def scope(self) -> str | None:
        """The owner whose jobs this caller sees; None for an admin, who sees all."""
        return None if self.admin else self.owner

    def expired(self) -> bool:
        return self.expires_at is not None and time.time() >= self.expires_at

    def check(self) -> None:
        if self.expired():
            raise Unauthenticated("the token expired")


ANONYMOUS_PRINCIPAL = Principal(ANONYMOUS)

SignIn = Callable[[Mapping[str, Any]], Awaitable[Principal | None]]
"""The host application's sign-in (``JOBQL_AUTH_MODE=external``): the caller of an ASGI
scope (an HTTP request or a WebSocket upgrade), from its session cookie for example, or None.
It may do blocking I/O only off the event loop (``gql.django`` uses ``sync_to_async``)."""


def credential_of(params: Mapping[str, Any] | None) -> str | None:
    """The credential in a WebSocket ``connection_init`` payload, as clients send it:
    ``{"Authorization": "Bearer ..."}``, lowercase, or under ``headers``."""
    if not params:
        return None
    headers = params.get("headers")
    for source in (params, headers if isinstance(headers, Mapping) else {}):
        for name in ("Authorization", "authorization"):
            value = source.get(name)
            if isinstance(value, str):
                return value
    return None


class Authenticator:
    """Turns a credential (an ``Authorization`` value) into a :class:`Principal`."""

    def __init__(self, settings: AuthSettings, sign_in: SignIn | None = None) -> None:
        self.methods = settings.methods
        if ("external" in self.methods) != (sign_in is not None):
            raise ValueError(
                "JOBQL_AUTH_MODE=external needs the host application's sign-in (gql.django), "
                "and a sign-in needs JOBQL_AUTH_MODE=external"
            )
        self._sign_in = sign_in
        self.session_recheck_seconds = settings.session_recheck_seconds
        self._admins = frozenset(settings.admin_owners)
        self._api_keys = dict(settings.api_keys)
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._leeway = settings.jwt_leeway_seconds
        self._admin_claim = settings.jwt_admin_claim
        self._admin_value = settings.jwt_admin_value
        self._tokens: dict[str, Principal] = {}
        self._key: Any = None
        self._jwks: jwt.PyJWKClient | None = None
        self._jwks_keys: dict[str, Any] = {}
        self._jwks_fetched = float("-inf")
        self._jwks_lock = asyncio.Lock()
        if settings.jwt_secret is not None:
            self._key = settings.jwt_secret.get_secret_value()
            self._algorithms = list(settings.jwt_algorithms or ("HS256",))
        else:
            self._algorithms = list(settings.jwt_algorithms or ("RS256", "ES256"))
        if settings.jwt_public_key is not None:
            self._key = serialization.load_pem_public_key(settings.jwt_public_key.encode())
        if settings.jwks_url is not None:
            self._jwks = jwt.PyJWKClient(settings.jwks_url, cache_keys=False, timeout=5)

    @property
    def enabled(self) -> bool:
        return bool(self.methods)

    async def authenticate_scope(
        self, scope: Mapping[str, Any], credential: str | None
    ) -> Principal:
        """The caller of a request or WebSocket: its credential when it sends one, else
        whoever the host application signed in (``external``)."""
        if credential is None and self._sign_in is not None:
            principal = await self._sign_in(scope)
            if principal is not None:
                return self._principal(
                    principal.owner, principal.admin, principal.expires_at, external=True
                )
            raise Unauthenticated("sign in first, or send an Authorization header")
        return await self.authenticate(credential)

    async def still_signed_in(self, scope: Mapping[str, Any], principal: Principal) -> bool:
        """Whether the host application still signs the caller of ``scope`` in as
        ``principal`` (a logout, a changed password or a user made inactive says no)."""
        try:
            again = await self.authenticate_scope(scope, None)
        except Unauthenticated:
            return False
        return (again.owner, again.admin) == (principal.owner, principal.admin)

    async def authenticate(self, credential: str | None) -> Principal:
        """The caller of ``credential``; raises :class:`Unauthenticated` when it is not good."""
        if not self.methods:
            return ANONYMOUS_PRINCIPAL
        if not credential:
            raise Unauthenticated("credentials required: send an Authorization header")
        scheme, _, value = credential.strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if not value:
            raise Unauthenticated("unsupported credentials")
        if scheme == "apikey" and "api_key" in self.methods:
            return self._api_key(value)
        if scheme == "bearer":
            if "jwt" in self.methods and value.count(".") == 2:
                return await self._token(value)
            if "api_key" in self.methods:
                return self._api_key(value)
        raise Unauthenticated("unsupported credentials")

    def _principal(
        self, owner: Any, admin: bool, expires_at: float | None, *, external: bool = False
    ) -> Principal:
        if not isinstance(owner, str) or not _OWNER.fullmatch(owner):
            raise Unauthenticated("the credential names no usable owner")
        return Principal(owner, admin or owner in self._admins, expires_at, external)

    def _api_key(self, key: str) -> Principal:
        owner = self._api_keys.get(hashlib.sha256(key.encode()).hexdigest())
        if owner is None:
            raise Unauthenticated("unknown API key")
        return self._principal(owner, False, None)

    async def _token(self, token: str) -> Principal:
        known = self._tokens.get(token)
        if known is not None and not known.expired():
            return known
        key = await self._jwks_key(token) if self._jwks is not None else self._key
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from None
        principal = self._principal(
            claims["sub"], self._grants_admin(claims), float(claims["exp"]) + self._leeway
        )
        if len(self._tokens) >= _REMEMBERED_TOKENS:
            self._tokens.clear()
        self._tokens[token] = principal
        return principal

    def _grants_admin(self, claims: dict[str, Any]) -> bool:
        claim = claims.get(self._admin_claim)
        if isinstance(claim, str):
            return self._admin_value in claim.split()
        if isinstance(claim, list):
            return self._admin_value in claim
        return claim is True

    async def _jwks_key(self, token: str) -> Any:
        """The JWKS key named by the token's ``kid``, fetched in a thread when unknown."""
        assert self._jwks is not None
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from None
        if not isinstance(kid, str):
            raise Unauthenticated("invalid token: no key id (kid)")
        if kid not in self._jwks_keys:
            async with self._jwks_lock:
                if kid not in self._jwks_keys:
                    await self._refresh_jwks()
        key = self._jwks_keys.get(kid)
        if key is None:
            raise Unauthenticated("invalid token: unknown key id (kid)")
        return key

    async def _refresh_jwks(self) -> None:
        assert self._jwks is not None
        if time.monotonic() - self._jwks_fetched < _JWKS_REFRESH_SECONDS:
            return
        self._jwks_fetched = time.monotonic()
        try:
            keys = await asyncio.to_thread(self._jwks.get_jwk_set, True)
        except jwt.PyJWKClientError:
            logger.warning("could not fetch the JWKS; tokens with new key ids are refused")
            return
        self._jwks_keys = {k.key_id: k.key for k in keys.keys if k.key_id}
