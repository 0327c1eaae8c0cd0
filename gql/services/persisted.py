"""Automatic persisted queries (Apollo's APQ), so a client sends a query once and then only its
sha256 hash. The queries live in Redis, so a hash registered through one API replica is known to
all; a request naming an unknown hash gets ``PERSISTED_QUERY_NOT_FOUND``, on which Apollo's
``PersistedQueryLink`` sends the hash again with the full query.
"""

from __future__ import annotations

import hashlib
from typing import Any

import redis.asyncio as aioredis

from tasks.core.records import PREFIX

KEY_PREFIX = f"{PREFIX}:apq:"
NOT_FOUND = "PERSISTED_QUERY_NOT_FOUND"


class PersistedQueryError(Exception):
    """The request's persisted query cannot be used; ``code`` goes to ``extensions.code``."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def requested_hash(extensions: Any) -> str | None:
    """The sha256 hash of ``extensions.persistedQuery``, or None when there is none."""
    if not isinstance(extensions, dict):
        return None
    persisted = extensions.get("persistedQuery")
    if not isinstance(persisted, dict):
        return None
    if persisted.get("version", 1) != 1:
        raise PersistedQueryError("only persisted query version 1 is known", "BAD_REQUEST")
    digest = persisted.get("sha256Hash")
    if not isinstance(digest, str) or len(digest) != 64:
        raise PersistedQueryError("persistedQuery.sha256Hash must be 64 hex digits", "BAD_REQUEST")
    return digest.lower()


class PersistedQueries:
    def __init__(self, client: aioredis.Redis, ttl_seconds: int) -> None:
        self.client = client
        self.ttl = ttl_seconds

    async def resolve(self, digest: str, query: Any) -> str:
        """The query to run: ``query`` itself, registered under its hash, or the one
        registered before when the request sends the hash alone."""
        if isinstance(query, str) and query:
            if hashlib.sha256(query.encode()).hexdigest() != digest:
                raise PersistedQueryError("provided sha does not match query", "BAD_REQUEST")
            await self.client.set(KEY_PREFIX + digest, query, ex=self.ttl)
            return query
        found = await self.client.get(KEY_PREFIX + digest)
        if found is None:
            raise PersistedQueryError("PersistedQueryNotFound", NOT_FOUND)
        return str(found)
