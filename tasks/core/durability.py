"""Whether the Redis holding jobs keeps them across a crash and never evicts them: a Redis
without persistence comes back empty after a crash (the records and their messages gone,
subscribers answered ``NOT_FOUND``), and an evicting ``maxmemory-policy`` drops queued messages
and records under memory pressure. Neither is an error JobQL can refuse (a cache-only Redis may
be what a test wants), so the worker's start-up and ``jobql check`` warn about them.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

logger = logging.getLogger(__name__)


def _info(client: redis.Redis, section: str) -> dict[str, Any]:
    return dict(client.info(section))


def durability_warnings(client: redis.Redis) -> list[str]:
    """What this Redis would lose, one sentence each; empty when it is configured for jobs."""
    warnings = []
    aof = int(_info(client, "persistence").get("aof_enabled", 0)) == 1
    try:
        save = str(client.config_get("save").get("save", ""))
    except redis.ResponseError:  # CONFIG is often disabled on managed Redis: assume snapshots
        save = "unknown"
    if not aof and not save.strip():
        warnings.append(
            "Redis keeps no data across a restart (no appendonly, no save): a crash loses "
            "every queued job and record; set appendonly yes (appendfsync everysec)"
        )
    elif not aof:
        warnings.append(
            "Redis has no append-only file: a crash loses the jobs written since the last "
            "snapshot; set appendonly yes (appendfsync everysec)"
        )
    policy = str(_info(client, "memory").get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        warnings.append(
            f"Redis maxmemory-policy is {policy}: under memory pressure it evicts queued "
            "jobs and records; set maxmemory-policy noeviction"
        )
    return warnings


def warn_if_not_durable(client: redis.Redis, what: str) -> None:
    """Log each warning once at start-up; an unreachable Redis is reported elsewhere."""
    try:
        found = durability_warnings(client)
    except redis.RedisError:
        return
    for warning in found:
        logger.warning("%s: %s", what, warning)
