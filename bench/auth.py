"""A bench run with authentication on: ``python -m bench.run --auth jwt``.

The secret and the token are made at run time (no secret in any file); every GraphQL
request of the run then carries the token, over HTTP in its ``Authorization`` header and on
WebSockets in ``connection_init``. The limits that would cap the bench's own load (its
mutation rate and its thousands of subscriptions, all from one owner) are lifted, so the
figures show what verifying the token costs, plus the rate check (one Redis call per lease
of 32 mutations at this limit, see gql/services/limits.py).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import jwt

# The Authorization value of this run's GraphQL requests; None while authentication is off.
AUTHORIZATION: str | None = None


def jwt_on() -> dict[str, str]:
    """Mint a secret and a day's token for the owner ``bench``; the API's settings for it."""
    global AUTHORIZATION
    secret = secrets.token_urlsafe(48)
    now = int(time.time())
    token = jwt.encode({"sub": "bench", "iat": now, "exp": now + 24 * 3600}, secret, "HS256")
    AUTHORIZATION = f"Bearer {token}"
    return {
        "JOBQL_AUTH_MODE": "jwt",
        "JOBQL_JWT_SECRET": secret,
        "JOBQL_RATE_LIMIT_MUTATIONS": "100000000",
        "JOBQL_MAX_SUBSCRIPTIONS_PER_OWNER": "1000000",
    }


def header_lines(path: str) -> str:
    """Raw header lines for a request to ``path`` (only GraphQL requests carry the token)."""
    if AUTHORIZATION is None or path != "/graphql":
        return ""
    return f"Authorization: {AUTHORIZATION}\r\n"


def headers() -> dict[str, str]:
    return {"authorization": AUTHORIZATION} if AUTHORIZATION else {}


def init_payload() -> dict[str, Any]:
    return {"Authorization": AUTHORIZATION} if AUTHORIZATION else {}
