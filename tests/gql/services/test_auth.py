"""Credentials in, owners out: every way a token or an API key can be wrong, in process.

The same attacks go over HTTP and WebSockets against a real server in test_security.py.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.server
import json
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from gql.services.auth import ANONYMOUS, Authenticator, Principal, credential_of
from gql.services.errors import Unauthenticated
from tasks.core.settings import Settings

SECRET = secrets.token_urlsafe(48)
API_KEY = secrets.token_urlsafe(32)


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "auth_mode": "jwt,api_key",
        "jwt_secret": SECRET,
        "api_keys": {hashlib.sha256(API_KEY.encode()).hexdigest(): "service-a"},
    }
    return Settings(**{**values, **overrides})


def token(key: Any = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "alice", "exp": now + 300, "iat": now, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=algorithm)


def unsigned(**claims: Any) -> str:
    """An ``alg: none`` token: a header, the claims, and no signature."""
    return jwt.encode({"sub": "mallory", "exp": int(time.time()) + 300, **claims}, None, "none")


def hs256_by_hand(claims: dict[str, Any], secret: bytes) -> str:
    """What an attacker builds (PyJWT itself refuses a PEM as an HMAC secret)."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = part(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{part(signature)}"


async def refused(auth: Authenticator, credential: str | None) -> str:
    with pytest.raises(Unauthenticated) as caught:
        await auth.authenticate(credential)
    assert caught.value.extensions["code"] == "UNAUTHENTICATED"
    return str(caught.value)


async def test_a_valid_token_names_its_owner_and_is_remembered_until_it_expires() -> None:
    auth = Authenticator(settings().auth)
    first = await auth.authenticate(f"Bearer {token()}")
    assert (first.owner, first.admin, first.scope) == ("alice", False, "alice")
    assert first.expires_at is not None and first.expires_at > time.time()
    assert await auth.authenticate(f"Bearer {token(sub='bob')}") != first


@pytest.mark.parametrize(
    ("credential", "reason"),
    [
        (None, "credentials required"),
        ("", "credentials required"),
        ("Bearer", "unsupported"),
        ("Basic YWxpY2U6c2VjcmV0", "unsupported"),
        ("Bearer not.a.token", "invalid token"),
        (f"Bearer {token(exp=int(time.time()) - 10)}", "expired"),
        (f"Bearer {token(nbf=int(time.time()) + 300)}", "not yet valid"),
        (f"Bearer {token(exp=None)}", '"exp"'),
        (f"Bearer {token(sub=None)}", '"sub"'),
        (f"Bearer {token(key=secrets.token_urlsafe(48))}", "Signature verification failed"),
        (f"Bearer {unsigned()}", "invalid token"),
        (f"Bearer {token(sub='a:b')}", "no usable owner"),
        (f"Bearer {token(sub=42)}", "invalid token"),
        ("ApiKey wrong-key", "unknown API key"),
    ],
)
async def test_a_bad_credential_is_unauthenticated(credential: str | None, reason: str) -> None:
    assert reason in await refused(Authenticator(settings().auth), credential)


async def test_issuer_and_audience_are_checked_when_set() -> None:
    auth = Authenticator(settings(jwt_issuer="https://id.example", jwt_audience="jobql").auth)
    good = token(iss="https://id.example", aud="jobql")
    assert (await auth.authenticate(f"Bearer {good}")).owner == "alice"
    wrong_audience = token(iss="https://id.example", aud="other")
    assert "Audience" in await refused(auth, f"Bearer {wrong_audience}")
    wrong_issuer = token(iss="https://evil.example", aud="jobql")
    assert "issuer" in await refused(auth, f"Bearer {wrong_issuer}")
    assert "iss" in await refused(auth, f"Bearer {token(aud='jobql')}")


async def test_a_scope_claim_or_a_listed_owner_makes_an_admin() -> None:
    auth = Authenticator(settings(admin_owners=("root",)).auth)
    admin = await auth.authenticate(f"Bearer {token(scope='jobs:read jobql:admin')}")
    assert admin.admin and admin.scope is None
    assert not (await auth.authenticate(f"Bearer {token(scope='jobql:adminx')}")).admin
    assert (await auth.authenticate(f"Bearer {token(sub='root')}")).admin


async def test_an_api_key_acts_as_its_owner_under_either_scheme() -> None:
    auth = Authenticator(settings().auth)
    for credential in (f"ApiKey {API_KEY}", f"Bearer {API_KEY}"):
        principal = await auth.authenticate(credential)
        assert (principal.owner, principal.expires_at) == ("service-a", None)


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_a_pem_public_key_verifies_its_own_tokens_and_no_hmac_forgery(
    algorithm: str,
) -> None:
    private: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if algorithm == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    auth = Authenticator(settings(jwt_secret=None, jwt_public_key=pem).auth)
    principal = await auth.authenticate(f"Bearer {token(private, algorithm)}")
    assert principal.owner == "alice"
    # The key-confusion attack: the public key used as an HMAC secret.
    forged = hs256_by_hand({"sub": "mallory", "exp": 9999999999}, pem.encode())
    assert "invalid token" in await refused(auth, f"Bearer {forged}")


def test_no_authentication_is_anonymous_and_refused_in_production() -> None:
    assert Settings(env="development").auth_methods == frozenset()
    with pytest.raises(ValidationError, match="refused in production"):
        Settings(env="production", redis_url="redis://localhost")
    with pytest.raises(ValidationError, match="at least 32"):
        settings(jwt_secret="short")
    with pytest.raises(ValidationError, match="JOBQL_JWT_ALGORITHMS"):
        settings(jwt_algorithms=("RS256",))
    with pytest.raises(ValidationError, match="exactly one"):
        settings(jwt_public_key="-----BEGIN PUBLIC KEY-----")
    with pytest.raises(ValidationError, match="SHA-256"):
        settings(api_keys={"plain-key": "someone"})


async def test_anonymous_mode_lets_everyone_in_as_one_owner() -> None:
    auth = Authenticator(Settings(env="test").auth)
    assert (await auth.authenticate(None)).owner == ANONYMOUS


def test_a_websocket_credential_is_found_where_clients_put_it() -> None:
    assert credential_of({"Authorization": "Bearer a"}) == "Bearer a"
    assert credential_of({"authorization": "Bearer b"}) == "Bearer b"
    assert credential_of({"headers": {"Authorization": "Bearer c"}}) == "Bearer c"
    assert credential_of({}) is None
    assert credential_of(None) is None


@contextlib.contextmanager
def serving(document: dict[str, Any]) -> Iterator[tuple[str, list[int]]]:
    """A JWKS endpoint on loopback; yields its URL and a list that counts its fetches."""
    fetches: list[int] = []
    body = json.dumps(document).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetches.append(1)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/jwks.json", fetches
    finally:
        server.shutdown()
        server.server_close()


async def test_a_jwks_is_fetched_once_off_the_loop_and_unknown_kids_do_not_refetch() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    with serving({"keys": [{**jwk, "kid": "k1", "alg": "ES256", "use": "sig"}]}) as (url, fetched):
        auth = Authenticator(settings(jwt_secret=None, jwks_url=url).auth)
        for _ in range(3):
            signed = jwt.encode(
                {"sub": "alice", "exp": int(time.time()) + 60}, private, "ES256",
                headers={"kid": "k1"},
            )  # fmt: skip
            assert (await auth.authenticate(f"Bearer {signed}")).owner == "alice"
        stranger = jwt.encode(
            {"sub": "mallory", "exp": int(time.time()) + 60}, private, "ES256",
            headers={"kid": "made-up"},
        )  # fmt: skip
        for _ in range(3):
            assert "unknown key id" in await refused(auth, f"Bearer {stranger}")
        assert len(fetched) == 1


# A host application's sign-in (JOBQL_AUTH_MODE=external: a Django project's session).
async def _session_sign_in(scope: Any) -> Principal | None:
    cookies = dict(scope.get("headers") or ()).get(b"cookie", b"")
    return Principal("django-user", admin=False) if cookies == b"sessionid=good" else None


def _scope(cookie: bytes | None = None) -> dict[str, Any]:
    return {"type": "http", "headers": [(b"cookie", cookie)] if cookie else []}


def test_external_mode_and_a_sign_in_come_together() -> None:
    with pytest.raises(ValueError, match="external"):
        Authenticator(settings(auth_mode="external").auth)
    with pytest.raises(ValueError, match="external"):
        Authenticator(settings(auth_mode="jwt").auth, _session_sign_in)


async def test_the_host_signs_callers_in_and_a_sent_token_still_counts() -> None:
    auth = Authenticator(settings(auth_mode="external,jwt").auth, _session_sign_in)

    assert (await auth.authenticate_scope(_scope(b"sessionid=good"), None)).owner == "django-user"
    with pytest.raises(Unauthenticated, match="sign in"):
        await auth.authenticate_scope(_scope(b"sessionid=forged"), None)
    with pytest.raises(Unauthenticated):
        await auth.authenticate_scope(_scope(), None)
    bearer = f"Bearer {token()}"
    assert (await auth.authenticate_scope(_scope(b"sessionid=good"), bearer)).owner == "alice"
    with pytest.raises(Unauthenticated):
        await auth.authenticate_scope(_scope(b"sessionid=good"), "Bearer not-a-token")


def test_external_mode_is_accepted_in_production() -> None:
    live = settings(env="production", auth_mode="external", redis_url="redis://redis:6379/0")
    assert live.auth_methods == {"external"}
