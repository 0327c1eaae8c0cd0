"""``jobql migrate``: rewrites what older releases left in the records' Redis, so the current code
reads all of it. Two kinds of record are found by one SCAN per kind (jobs, then workflows):

- a record of the current, hash-tagged layout without a format field (format 1, written by 0.9.0
  or earlier after the tags came) gets the field, by HSETNX and nothing else, so it may be written
  by the service at the same moment; a workflow also gets its entry in its owner's workflow
  index, which 0.9.0 did not have;
- a record of the layout before hash tags (``jobql:job:<id>``, 0.8.0 and earlier: one Redis only)
  is renamed into the tagged layout in one script, keeping its TTL, with the index entries the
  create and transition scripts would have left for its state, its idempotency key, and its old
  index entries removed. One already present in the tagged layout is left alone.

Idempotent (a second run finds everything current) and resumable: the SCAN's kind and cursor are
kept in :data:`PROGRESS_KEY` after each batch, and a run continues from there.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis

from tasks.core import formats, redis_clients, slots
from tasks.core.records import (
    JOB_KEY_PREFIX,
    PREFIX,
    JobState,
    expiry_key,
    expiry_member,
    idempotency_key,
    idempotency_tag,
    indexes_of,
    job_key,
    owners_key,
    to_score,
)
from tasks.core.settings import Settings
from tasks.core.workflow_records import WORKFLOW_KEY_PREFIX, workflow_index_key, workflow_key

PROGRESS_KEY = f"{PREFIX}:migrate"
PROGRESS_TTL = 30 * 24 * 3600  # a run abandoned for a month starts again from the start
KINDS = ("jobs", "workflows")
_MATCH = {"jobs": JOB_KEY_PREFIX + "*", "workflows": WORKFLOW_KEY_PREFIX + "*"}
_BATCH = 500


# The layout before hash tags, as 0.8.0 wrote it (commit c029118, tasks/records.py and
# tasks/workflow_records.py): the owner was the tag of its own indexes, the rest untagged.
def old_index_key(owner: str, *, state: JobState | None = None, task: str | None = None) -> str:
    key = f"{PREFIX}:index:{{{owner}}}"
    if state is not None:
        key += f":state:{state.value}"
    if task is not None:
        key += f":task:{task}"
    return key


def old_indexes_of(owner: str, task: str) -> list[str]:
    return [
        old_index_key(owner),
        old_index_key(owner, task=task),
        *(old_index_key(owner, state=state) for state in JobState),
        *(old_index_key(owner, state=state, task=task) for state in JobState),
    ]


OLD_EXPIRY_PREFIX = f"{PREFIX}:expiry:"
OLD_OWNERS_KEY = f"{PREFIX}:owners"
OLD_IDEMPOTENCY_PREFIX = f"{PREFIX}:idem:"


# KEYS: the record
# ARGV: format field, format
# Returns 'versioned', 'current' (it has a format already), 'gone' or 'not a record'.
VERSION_SCRIPT = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return 'gone' end
if kind ~= 'hash' or redis.call('HEXISTS', KEYS[1], 'id') == 0 then return 'not a record' end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then return 'versioned' end
return 'current'
"""

# KEYS: the workflow's record, its owner's workflow index on its tag
# ARGV: format field, format, owner, creation score (µs), workflow id
# VERSION_SCRIPT, and a workflow given its format also gets its index entry (kept as long
# as the record, as the create script keeps it).
WORKFLOW_VERSION_SCRIPT = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return 'gone' end
if kind ~= 'hash' or redis.call('HEXISTS', KEYS[1], 'id') == 0 then return 'not a record' end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[3] then return 'changed' end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 'current' end
redis.call('ZADD', KEYS[2], 'NX', ARGV[4], ARGV[5])
local left = redis.call('TTL', KEYS[1])
if left > 0 and redis.call('TTL', KEYS[2]) < left then redis.call('EXPIRE', KEYS[2], left) end
return 'versioned'
"""

# KEYS: 1 old record, 2 new record, 3-18 the old indexes (old_indexes_of), 19 old expiry,
#       20 old owners set, 21-36 the new indexes (records.indexes_of), 37 new expiry,
#       38 new owners set, 39 old idempotency key, 40 new one (both KEYS[1] for none)
# ARGV: job id, owner, task, expiry member, creation score (µs), format field, format,
#       ttl (s) for a record that had none
# One job from the untagged layout into the tagged one, as the create and transition scripts
# would have left it in its state now: the record renamed (its TTL kept), in its new owner's
# all, task, state and (state, task) indexes at its old score, its expiry entry and owners
# membership; out of every old index. Returns 'rewritten', 'present' (a record of that id is
# in the tagged layout: both are left alone), 'gone' or 'changed' (owner or task not what
# was read: read again).
MIGRATE_SCRIPT = """
local slot = {__STATE_SLOTS__}
if redis.call('EXISTS', KEYS[2]) == 1 then return 'present' end
local rec = redis.call('HMGET', KEYS[1], 'id', 'owner', 'task', 'state')
if not rec[4] then return 'gone' end
if rec[1] ~= ARGV[1] or rec[2] ~= ARGV[2] or rec[3] ~= ARGV[3] then return 'changed' end
local s = slot[rec[4]]
if not s then return 'changed' end
local score = redis.call('ZSCORE', KEYS[3], ARGV[1]) or ARGV[5]
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[2], ARGV[6], ARGV[7])
local left = redis.call('PTTL', KEYS[2])
if left < 0 then
  left = tonumber(ARGV[8]) * 1000
  redis.call('PEXPIRE', KEYS[2], left)
end
for i = 3, 18 do redis.call('ZREM', KEYS[i], ARGV[1]) end
redis.call('ZREM', KEYS[19], ARGV[4])
if redis.call('EXISTS', KEYS[3]) == 0 then redis.call('SREM', KEYS[20], ARGV[2]) end
for _, i in ipairs({21, 22, 23 + s, 30 + s}) do redis.call('ZADD', KEYS[i], score, ARGV[1]) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZADD', KEYS[37], string.format('%.0f', now + left * 1000), ARGV[4])
redis.call('SADD', KEYS[38], ARGV[2])
if KEYS[39] ~= KEYS[1] and redis.call('GET', KEYS[39]) == ARGV[1] then
  local kept = redis.call('PTTL', KEYS[39])
  if kept > 0 and redis.call('EXISTS', KEYS[40]) == 0 then
    redis.call('SET', KEYS[40], ARGV[1], 'PX', kept)
  end
  redis.call('DEL', KEYS[39])
end
return 'rewritten'
""".replace("__STATE_SLOTS__", ", ".join(f"{s.value} = {i}" for i, s in enumerate(JobState)))

# KEYS: old workflow record, new one, its owner's workflow index on its tag
# ARGV: workflow id, owner, creation score (µs), format field, format, ttl (s) if it had none
WORKFLOW_MIGRATE_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 'present' end
local rec = redis.call('HMGET', KEYS[1], 'id', 'owner')
if not rec[2] then return 'gone' end
if rec[1] ~= ARGV[1] or rec[2] ~= ARGV[2] then return 'changed' end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[2], ARGV[4], ARGV[5])
if redis.call('TTL', KEYS[2]) < 0 then redis.call('EXPIRE', KEYS[2], tonumber(ARGV[6])) end
redis.call('ZADD', KEYS[3], 'NX', ARGV[3], ARGV[1])
local left = redis.call('TTL', KEYS[2])
if redis.call('TTL', KEYS[3]) < left then redis.call('EXPIRE', KEYS[3], left) end
return 'rewritten'
"""

SKIP_REASONS = {
    "present": "present in both layouts (the tagged record is kept, the old one left)",
    "gone": "expired or deleted while the run read it",
    "changed": "changed while the run read it (run again)",
    "not a record": "not a record (another kind of key under the prefix)",
    "cluster": "untagged on a cluster (JobQL never wrote one there)",
    "unreadable": "unreadable (no owner, task or creation time)",
}


@dataclass
class Counts:
    """What one run did, per kind of record."""

    seen: Counter[str] = field(default_factory=Counter)
    rewritten: Counter[str] = field(default_factory=Counter)
    versioned: Counter[str] = field(default_factory=Counter)
    current: Counter[str] = field(default_factory=Counter)
    skipped: Counter[tuple[str, str]] = field(default_factory=Counter)

    def total(self) -> int:
        return sum(self.seen.values())


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Migration:
    """One run over the records' Redis (``client``: decoding replies)."""

    def __init__(self, client: Any, settings: Settings, *, dry_run: bool = False) -> None:
        self.client = client
        self.settings = settings
        self.dry_run = dry_run
        self.cluster = settings.records_cluster
        self.counts = Counts()
        self.version = client.register_script(VERSION_SCRIPT)
        self.workflow_version = client.register_script(WORKFLOW_VERSION_SCRIPT)
        self.migrate = client.register_script(MIGRATE_SCRIPT)
        self.workflow_migrate = client.register_script(WORKFLOW_MIGRATE_SCRIPT)

    def run(self, limit: int | None = None) -> bool:
        """Scan on from the saved progress; True once every kind was scanned to its end."""
        kind, cursor = self._progress()
        for name in KINDS[KINDS.index(kind) :]:
            if self.cluster:  # a cluster scans node by node: no single cursor to keep
                for key in self.client.scan_iter(match=_MATCH[name], count=_BATCH):
                    if limit is not None and self.counts.total() >= limit:
                        return False
                    self._one(name, _text(key))
                continue
            while True:
                following, keys = self.client.scan(cursor, match=_MATCH[name], count=_BATCH)
                for key in keys:
                    if limit is not None and self.counts.total() >= limit:
                        # This batch is scanned again next time: what it did is current now.
                        self._save(name, cursor)
                        return False
                    self._one(name, _text(key))
                cursor = int(following)
                if cursor == 0:
                    break
                self._save(name, cursor)
            cursor = 0
            self._save(KINDS[min(KINDS.index(name) + 1, len(KINDS) - 1)], 0)
        if not self.dry_run:
            self.client.delete(PROGRESS_KEY)
        return True

    def _progress(self) -> tuple[str, int]:
        if self.cluster:
            return KINDS[0], 0
        saved = self.client.hgetall(PROGRESS_KEY)
        kind = saved.get("kind", KINDS[0])
        return (kind if kind in KINDS else KINDS[0]), int(saved.get("cursor") or 0)

    def resumed(self) -> tuple[str, int] | None:
        """Where an earlier run stopped, if one did."""
        if self.cluster or not self.client.exists(PROGRESS_KEY):
            return None
        return self._progress()

    def _save(self, kind: str, cursor: int) -> None:
        if not self.dry_run:
            self.client.hset(PROGRESS_KEY, mapping={"kind": kind, "cursor": cursor})
            self.client.expire(PROGRESS_KEY, PROGRESS_TTL)

    def _one(self, kind: str, key: str) -> None:
        prefix = JOB_KEY_PREFIX if kind == "jobs" else WORKFLOW_KEY_PREFIX
        rest = key[len(prefix) :]
        if rest.startswith("{"):
            record_id = rest[rest.find("}") + 2 :]
            if ":" in record_id:
                return  # a record's companion (its log lines, unsent marker, run lease)
            self.counts.seen[kind] += 1
            self._versioned(kind, key, record_id)
            return
        if ":" in rest:
            return
        self.counts.seen[kind] += 1
        if self.cluster:
            self.counts.skipped[kind, "cluster"] += 1
        elif kind == "jobs":
            self._tally(kind, self._job(key, rest))
        else:
            self._tally(kind, self._workflow(key, rest))

    def _tally(self, kind: str, outcome: str) -> None:
        if outcome == "rewritten":
            self.counts.rewritten[kind] += 1
        elif outcome == "versioned":
            self.counts.versioned[kind] += 1
        elif outcome == "current":
            self.counts.current[kind] += 1
        else:
            self.counts.skipped[kind, outcome] += 1

    def _versioned(self, kind: str, key: str, record_id: str) -> None:
        if self.dry_run:
            value = self.client.hget(key, formats.FORMAT_FIELD)
            self._tally(kind, "current" if value else "versioned")
            return
        field_value = (formats.FORMAT_FIELD, formats.CURRENT)
        if kind == "jobs":
            self._tally(kind, _text(self.version(keys=[key], args=field_value)))
            return
        owner, created = self.client.hmget(key, "owner", "created_at")
        if not owner or not created:
            self._tally(kind, "gone" if not self.client.exists(key) else "unreadable")
            return
        index = workflow_index_key(owner, slots.tag_of(record_id))
        args = [*field_value, owner, _score(created), record_id]
        self._tally(kind, _text(self.workflow_version(keys=[key, index], args=args)))

    def _job(self, key: str, job_id: str) -> str:
        new = job_key(job_id)
        fields = ("id", "owner", "task", "created_at", "idempotency_key")
        found_id, owner, task, created, idempotency = self.client.hmget(key, fields)
        if found_id is None:
            return "gone" if not self.client.exists(key) else "not a record"
        if not (owner and task and created):
            return "unreadable"
        if self.dry_run:
            return "present" if self.client.exists(new) else "rewritten"
        tag = slots.tag_of(job_id)
        member = expiry_member(job_id, task)
        old_idem = new_idem = key
        if idempotency and idempotency_tag(owner, idempotency) == tag:
            old_idem = f"{OLD_IDEMPOTENCY_PREFIX}{owner}:{idempotency}"
            new_idem = idempotency_key(owner, idempotency)
        keys = [
            key,
            new,
            *old_indexes_of(owner, task),
            f"{OLD_EXPIRY_PREFIX}{{{owner}}}",
            OLD_OWNERS_KEY,
            *indexes_of(owner, task, tag),
            expiry_key(owner, tag),
            owners_key(tag),
            old_idem,
            new_idem,
        ]
        args = [job_id, owner, task, member, _score(created), formats.FORMAT_FIELD,
                formats.CURRENT, self.settings.job_retention_seconds]  # fmt: skip
        return _text(self.migrate(keys=keys, args=args))

    def _workflow(self, key: str, workflow_id: str) -> str:
        found_id, owner, created = self.client.hmget(key, "id", "owner", "created_at")
        if found_id is None:
            return "gone" if not self.client.exists(key) else "not a record"
        if not (owner and created):
            return "unreadable"
        new = workflow_key(workflow_id)
        if self.dry_run:
            return "present" if self.client.exists(new) else "rewritten"
        index = workflow_index_key(owner, slots.tag_of(workflow_id))
        args = [workflow_id, owner, _score(created), formats.FORMAT_FIELD, formats.CURRENT,
                self.settings.job_retention_seconds]  # fmt: skip
        return _text(self.workflow_migrate(keys=[key, new, index], args=args))


def _score(created: str) -> int:
    return to_score(datetime.fromisoformat(created))


def _report(counts: Counts, dry_run: bool, finished: bool, limit: int | None) -> None:
    verb = "would be " if dry_run else ""
    for kind in KINDS:
        print(f"{kind}: seen {counts.seen[kind]}, {verb}rewritten from the untagged layout "  # noqa: T201
              f"{counts.rewritten[kind]}, {verb}given their format {counts.versioned[kind]}, "
              f"already current {counts.current[kind]}, skipped "
              f"{sum(n for (k, _), n in counts.skipped.items() if k == kind)}")  # fmt: skip
        for (skipped_kind, reason), n in sorted(counts.skipped.items()):
            if skipped_kind == kind:
                print(f"  skipped {n}: {SKIP_REASONS.get(reason, reason)}")  # noqa: T201
    if dry_run:
        print("dry run: nothing was written")  # noqa: T201
    elif finished:
        print("done: every record is of the current layout and format")  # noqa: T201
    else:
        print(f"stopped after --limit {limit}: run `jobql migrate` again to continue")  # noqa: T201


def run_migrate(args: argparse.Namespace) -> int:
    from gql.ops.checks import load_settings

    settings = load_settings()
    if settings is None:
        return 1
    slots.configure(settings.layout)
    if settings.records_cluster:
        client: Any = redis_clients.sync_cluster(settings.records, settings)
    else:
        client = redis_clients.sync_client(settings.records, settings)
    try:
        migration = Migration(client, settings, dry_run=args.dry_run)
        if (where := migration.resumed()) is not None:
            print(f"resuming the last run at its {where[0]}, cursor {where[1]}")  # noqa: T201
        finished = migration.run(limit=args.limit)
    except redis.RedisError as exc:
        print(f"FAIL  the records' Redis: {type(exc).__name__}: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    finally:
        redis_clients.close(client)
    _report(migration.counts, args.dry_run, finished, args.limit)
    sys.stdout.flush()
    return 0
