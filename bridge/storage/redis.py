"""`redis://host:port/db?prefix=NAME`: one store shared by several bridge instances.

Key layout (`P` is the prefix, default `bridge`; a session id never contains a space,
and its keys end with a fixed suffix, so no two sessions' keys can collide):

    P:epoch                 string   the history's lifetime (named anew only if lost)
    P:template              string   the chat template as JSON
    P:token_secret          string   hex of the random secret that signs session tokens
    P:sessions              zset     session id -> creation ordinal (from P:ord)
    P:ord                   string   counter of created sessions
    P:listen                zset     "sid seq" -> ordinal (from P:listen:n): the Listen
                                     backlog of every session, oldest first (a released
                                     message gets an ordinal below every other)
    P:listen:n              string   counter of backlog entries
    P:leases                zset     "sid seq" -> deadline: the Listen lease of every
                                     claimed message not yet answered, of every session
    P:s:{sid}:meta          hash     created_at, last_seq, last:ai, last:user
    P:s:{sid}:msgs          zset     "seq|{json}" scored by seq (the message without seq)
    P:s:{sid}:keys          zset     idempotency key -> seq of the message it stored
    P:s:{sid}:listen        list     seqs of this session's backlog entries, oldest first:
                                     at most `listen_backlog_per_session` of them
    P:s:{sid}:leases        zset     seq -> deadline: this session's leases (as many at most)
    P:s:{sid}:tries         hash     seq -> claims made so far, of a leased message or of a
                                     released one back in the backlog

Every write that must be atomic is one Lua script (sent with EVALSHA): an append assigns
the seq, checks the sessions quota and seeds a new session, checks the idempotency key,
pushes Listen backlog entries (evicting that session's oldest beyond its bound) and trims
history in one step (an `ai` message also drops its session's Listen leases there), so
concurrent appends from any number of instances get contiguous seqs. The client never
retries a command by itself: a retried append whose first attempt did run would store
the message twice, so a failure is reported as `StorageUnavailable` and the caller
retries with its idempotency key.

Durability is Redis's: with `appendonly yes` and `appendfsync everysec` a Redis crash
loses at most a second; a `kill -9` of a bridge loses nothing it answered 200 for.
Lease deadlines are the claiming instance's wall clock (`time.time()`), passed to the
scripts: instances whose clocks differ by a few seconds re-offer a message that much
earlier or later, which a lease of minutes (300 s by default) absorbs.
Scripts touch keys of other sessions only through the prefix (Listen claims of any
session, reset), which standalone Redis allows; Redis Cluster is not supported.

The URL, the client and the error mapping come from `bridge.storage.redis_target`, which
the Redis broker shares; the broker's own keys (`P:events`, `P:lock:*`, `P:presence:*`,
`P:instance:*`) are its business, and it reads this store only through `Storage`.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from bridge.errors import StorageUnavailable
from bridge.models import Draft, SessionInfo, StoredMessage, Template
from bridge.settings import Settings
from bridge.storage.base import (
    Appended,
    Claimed,
    DroppedLease,
    ListenClaim,
    check_page,
    sessions_quota,
)
from bridge.storage.redis_target import RedisTarget, as_text, redis_errors

__all__ = ["Keys", "RedisStorage", "RedisTarget", "redis_errors"]

_RESET_BATCH = 200
_HISTORY_BATCH = 16  # members a bounded history read takes from the zset at a time
_CLAIM_BATCH = 64  # leases or backlog entries an exclusive claim reads at a time


@dataclass(frozen=True, slots=True)
class Keys:
    """The store's keys under one prefix (the layout is in the module doc). The broker
    names its own keys under the same prefix (`bridge.broker_redis`) and reads none of
    these: it asks the store through the `Storage` interface."""

    prefix: str

    def session(self, session_id: str, part: str) -> str:
        """A key of one session: part is meta, msgs, keys, listen, leases or tries."""
        return f"{self.prefix}:s:{session_id}:{part}"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}:epoch"

    @property
    def template(self) -> str:
        return f"{self.prefix}:template"

    @property
    def token_secret(self) -> str:
        return f"{self.prefix}:token_secret"

    @property
    def sessions(self) -> str:
        return f"{self.prefix}:sessions"

    @property
    def order(self) -> str:
        return f"{self.prefix}:ord"

    @property
    def listen(self) -> str:
        return f"{self.prefix}:listen"

    @property
    def listen_counter(self) -> str:
        return f"{self.prefix}:listen:n"

    @property
    def leases(self) -> str:
        return f"{self.prefix}:leases"


def _encode(message: StoredMessage) -> str:
    # ASCII-only JSON: a lone surrogate in content survives as an escape instead of
    # failing the UTF-8 encoding on the way to Redis. `stopped` only when true: every
    # other message is stored as before it existed.
    data: dict[str, Any] = {
        "id": message.id,
        "role": message.role,
        "content": message.content,
        "type": message.type,
        "created_at": message.created_at,
    }
    if message.stopped:
        data["stopped"] = True
    return json.dumps(data, separators=(",", ":"))


def _decode(session_id: str, member: object) -> StoredMessage:
    """A message from its `P:s:{sid}:msgs` member, `seq|{json}`."""
    seq, _, body = as_text(member).partition("|")
    data = json.loads(body)
    return StoredMessage(
        data["id"],
        session_id,
        int(seq),
        data["role"],
        data["content"],
        data["type"],
        data["created_at"],
        data.get("stopped") is True,
    )


# KEYS: meta msgs keys slisten glisten sessions ord listen_n sleases gleases tries
# ARGV: sid now history_limit backlog_per_session mode key n sessions_max, then
#       (json role key) per message: the seed first, then (mode "append") the draft.
# Returns {0} (create: the session existed), {2, member} (duplicate key), {3, held}
# (a new session refused: the store holds `held`, sessions_max or more), or
# {1, last_seq, created}.
_APPEND = """
local sid, now, mode, key = ARGV[1], ARGV[2], ARGV[5], ARGV[6]
local limit, backlog, total = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[7])
local nseed = total
if mode == 'append' then nseed = total - 1 end
local last = redis.call('HGET', KEYS[1], 'last_seq')
local first, created = 1, 0
if last then
  if mode == 'create' then return {0} end
  if key ~= '' then
    local seq = redis.call('ZSCORE', KEYS[3], key)
    if seq then
      local found = redis.call('ZRANGEBYSCORE', KEYS[2], seq, seq)
      if found[1] then return {2, found[1]} end
    end
  end
  first = nseed + 1
  last = tonumber(last)
else
  -- Checked and created in this one script: no two instances can both take the last place.
  local held = redis.call('ZCARD', KEYS[6])
  if held >= tonumber(ARGV[8]) then return {3, held} end
  last, created = 0, 1
  redis.call('HSET', KEYS[1], 'created_at', now)
  redis.call('ZADD', KEYS[6], redis.call('INCR', KEYS[7]), sid)
end
for i = first, total do
  local o = 6 + i * 3
  last = last + 1
  redis.call('ZADD', KEYS[2], last, last .. '|' .. ARGV[o])
  if ARGV[o + 2] ~= '' then redis.call('ZADD', KEYS[3], last, ARGV[o + 2]) end
  redis.call('HSET', KEYS[1], 'last:' .. ARGV[o + 1], last)
  if ARGV[o + 1] == 'user' then
    redis.call('ZADD', KEYS[5], redis.call('INCR', KEYS[8]), sid .. ' ' .. last)
    -- A flood evicts its own session's oldest entries, never another session's.
    if redis.call('RPUSH', KEYS[4], last) > backlog then
      local evicted = redis.call('LPOP', KEYS[4])
      redis.call('ZREM', KEYS[5], sid .. ' ' .. evicted)
      redis.call('HDEL', KEYS[11], evicted)
    end
  elseif ARGV[o + 1] == 'ai' and redis.call('EXISTS', KEYS[9]) == 1 then
    -- An answer acknowledges every Listen lease of its session: those are answered.
    for _, seq in ipairs(redis.call('ZRANGE', KEYS[9], 0, -1)) do
      redis.call('ZREM', KEYS[10], sid .. ' ' .. seq)
      redis.call('HDEL', KEYS[11], seq)
    end
    redis.call('UNLINK', KEYS[9])
  end
end
redis.call('HSET', KEYS[1], 'last_seq', last)
-- Trim in steps of a tenth of the limit so the cost is spread over many appends.
if redis.call('ZCARD', KEYS[2]) > limit + math.max(1, math.floor(limit / 10)) then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', last - limit)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', last - limit)
end
return {1, last, created}
"""

# KEYS: msgs ; ARGV: low high last max_bytes batch. `history` with `max_bytes`: members
# with score in [low, high] (only the newest `last` of them unless last is -1), oldest
# first, while their lengths add up to at most max_bytes, and always the first. Read in
# batches of `batch` from the score after the last one taken, so that the script holds
# at most one batch beyond the page, however large the messages.
_HISTORY = """
local low, high = ARGV[1], ARGV[2]
local last, budget, batch = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local skip = 0
if last >= 0 then skip = math.max(0, redis.call('ZCOUNT', KEYS[1], low, high) - last) end
local out, total = {}, 0
while true do
  local got = redis.call('ZRANGEBYSCORE', KEYS[1], low, high, 'WITHSCORES', 'LIMIT', skip, batch)
  for i = 1, #got, 2 do
    total = total + #got[i]
    if #out > 0 and total > budget then return out end
    out[#out + 1] = got[i]
  end
  if #got < 2 * batch then return out end
  low, skip = '(' .. got[#got], 0
end
"""

# KEYS: meta msgs ; ARGV: role. The newest kept message of that role, or nil.
_LAST_OF_ROLE = """
local seq = redis.call('HGET', KEYS[1], 'last:' .. ARGV[1])
if not seq then return false end
local found = redis.call('ZRANGEBYSCORE', KEYS[2], seq, seq)
return found[1] or false
"""

# KEYS: meta msgs keys slisten glisten sessions sleases gleases tries ; ARGV: sid
_DELETE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for _, seq in ipairs(redis.call('LRANGE', KEYS[4], 0, -1)) do
  redis.call('ZREM', KEYS[5], ARGV[1] .. ' ' .. seq)
end
for _, seq in ipairs(redis.call('ZRANGE', KEYS[7], 0, -1)) do
  redis.call('ZREM', KEYS[8], ARGV[1] .. ' ' .. seq)
end
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[7], KEYS[9])
redis.call('ZREM', KEYS[6], ARGV[1])
return 1
"""

# KEYS: sessions glisten ord listen_n gleases ; ARGV: prefix batch. Deletes up to `batch`
# sessions per call so that a reset of many sessions never blocks Redis for long; the
# call that finds none left also drops the counters (nothing older remains to order).
_RESET = """
local sids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
for _, sid in ipairs(sids) do
  local base = ARGV[1] .. ':s:' .. sid .. ':'
  redis.call('UNLINK', base .. 'meta', base .. 'msgs', base .. 'keys', base .. 'listen',
             base .. 'leases', base .. 'tries')
  redis.call('ZREM', KEYS[1], sid)
end
redis.call('UNLINK', KEYS[2], KEYS[5])
if #sids == 0 then redis.call('UNLINK', KEYS[3], KEYS[4]) end
return #sids
"""

# KEYS: glisten gleases, then for one session's claim: slisten msgs sleases tries.
# ARGV: prefix sid ('' for any session) now deadline attempts_max bound leasing(1/0)
# exclusive(1/0) batch.
# Claim for Listen: first the lease that ran out (score <= now) longest ago whose attempts
# are below the maximum, leased again; then the oldest backlog entry, leased. Leases that
# used up their attempts, and a session's oldest beyond `bound`, are dropped and reported;
# entries whose message was trimmed or deleted since are dropped on the way. An exclusive
# claim passes over busy sessions (holding a lease with a deadline after now): it reads
# the run-out leases and the backlog `batch` at a time, never whole, and leaves the
# entries of busy sessions where they are.
# Returns {1, sid, member, attempt, dropped...} or {0, '', '', 0, dropped...}, where
# dropped is (sid, seq, attempts) triples.
_CLAIM = """
local prefix, sid, now, deadline = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local amax, bound, leasing = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7] == '1'
local exclusive, batch = leasing and ARGV[8] == '1', tonumber(ARGV[9])
local out = {0, '', '', 0}

local function keys_of(s)
  if sid ~= '' then return KEYS[3], KEYS[4], KEYS[5], KEYS[6] end
  local base = prefix .. ':s:' .. s .. ':'
  return base .. 'listen', base .. 'msgs', base .. 'leases', base .. 'tries'
end

local function split(member)
  local cut = string.find(member, ' ', 1, true)
  return string.sub(member, 1, cut - 1), string.sub(member, cut + 1)
end

local function unlease(s, seq, sleases, tries)
  redis.call('ZREM', sleases, seq)
  redis.call('ZREM', KEYS[2], s .. ' ' .. seq)
  redis.call('HDEL', tries, seq)
end

local function drop(s, seq, attempts)
  out[#out + 1] = s
  out[#out + 1] = seq
  out[#out + 1] = attempts
end

-- Hand out message `seq` of session `s` as its next attempt, under a lease.
local function give(s, seq, body, sleases, tries)
  local attempt = redis.call('HINCRBY', tries, seq, 1)
  if leasing then
    redis.call('ZADD', sleases, deadline, seq)
    redis.call('ZADD', KEYS[2], deadline, s .. ' ' .. seq)
    while redis.call('ZCARD', sleases) > bound do
      local oldest = redis.call('ZRANGE', sleases, 0, 0)[1]
      local attempts = tonumber(redis.call('HGET', tries, oldest) or '0')
      unlease(s, oldest, sleases, tries)
      drop(s, oldest, attempts)
    end
  else
    redis.call('HDEL', tries, seq)
  end
  out[1], out[2], out[3], out[4] = 1, s, body, attempt
  return out
end

-- Whether session `s` holds a lease running past now (exclusive claims only). Nothing
-- this script does before it hands out a message changes that: known once per session.
local busy = {}
local function is_busy(s, sleases)
  if not exclusive then return false end
  if busy[s] == nil then busy[s] = redis.call('ZCOUNT', sleases, '(' .. now, '+inf') > 0 end
  return busy[s]
end

if leasing then
  -- `skip` counts the run-out leases passed over (busy sessions'): they stay in place.
  local step, skip = 1, 0
  if exclusive then step = batch end
  while true do
    local got
    if sid ~= '' then
      got = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', skip, step)
    else
      got = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', skip, step)
    end
    for _, member in ipairs(got) do
      local s, seq = sid, member
      if sid == '' then s, seq = split(member) end
      local _, msgs, sleases, tries = keys_of(s)
      local attempts = tonumber(redis.call('HGET', tries, seq) or '0')
      if attempts < amax and is_busy(s, sleases) then
        skip = skip + 1
      else
        local body = nil
        if attempts < amax then body = redis.call('ZRANGEBYSCORE', msgs, seq, seq)[1] end
        if body then return give(s, seq, body, sleases, tries) end
        unlease(s, seq, sleases, tries)
        if attempts >= amax then drop(s, seq, attempts) end
      end
    end
    if #got < step then break end
  end
end
if sid ~= '' and is_busy(sid, KEYS[5]) then return out end
if exclusive and sid == '' then
  -- The backlog in order, `batch` entries at a time from the score after the last read
  -- (ordinals are unique), passing over the entries of busy sessions.
  local low = '-inf'
  while true do
    local got = redis.call('ZRANGEBYSCORE', KEYS[1], low, '+inf', 'WITHSCORES', 'LIMIT', 0, batch)
    for i = 1, #got, 2 do
      local s, seq = split(got[i])
      local slisten, msgs, sleases, tries = keys_of(s)
      if not is_busy(s, sleases) then
        redis.call('ZREM', KEYS[1], got[i])
        redis.call('LREM', slisten, 1, seq)
        local body = redis.call('ZRANGEBYSCORE', msgs, seq, seq)[1]
        if body then return give(s, seq, body, sleases, tries) end
        redis.call('HDEL', tries, seq)
      end
    end
    if #got < 2 * batch then return out end
    low = '(' .. got[#got]
  end
end
while true do
  local s, seq = sid, nil
  if sid ~= '' then
    seq = redis.call('LPOP', KEYS[3])
    if seq then redis.call('ZREM', KEYS[1], sid .. ' ' .. seq) end
  else
    local popped = redis.call('ZPOPMIN', KEYS[1])
    if popped[1] then
      s, seq = split(popped[1])
      redis.call('LREM', prefix .. ':s:' .. s .. ':listen', 1, seq)
    end
  end
  if not seq then return out end
  local _, msgs, sleases, tries = keys_of(s)
  local body = redis.call('ZRANGEBYSCORE', msgs, seq, seq)[1]
  if body then return give(s, seq, body, sleases, tries) end
  redis.call('HDEL', tries, seq)
end
"""

# KEYS: slisten glisten msgs listen_n sleases tries gleases ; ARGV: sid seq id attempt.
# Put a claimed message back at the front of both queues, if history still holds it
# (same id: not a later session's message under the same seq), it is not there already,
# and it was not claimed again since (its lease is on this attempt). Its lease goes; the
# attempts before this one stay counted. Returns 1 if put back.
_RELEASE = """
local found = redis.call('ZRANGEBYSCORE', KEYS[3], ARGV[2], ARGV[2])
if not found[1] then return 0 end
local body = string.sub(found[1], string.find(found[1], '|', 1, true) + 1)
if cjson.decode(body)['id'] ~= ARGV[3] then return 0 end
local member = ARGV[1] .. ' ' .. ARGV[2]
if redis.call('ZSCORE', KEYS[2], member) then return 0 end
local attempt = tonumber(ARGV[4])
if redis.call('ZSCORE', KEYS[5], ARGV[2]) then
  if tonumber(redis.call('HGET', KEYS[6], ARGV[2]) or '0') ~= attempt then return 0 end
  redis.call('ZREM', KEYS[5], ARGV[2])
  redis.call('ZREM', KEYS[7], member)
end
if attempt > 1 then
  redis.call('HSET', KEYS[6], ARGV[2], attempt - 1)
else
  redis.call('HDEL', KEYS[6], ARGV[2])
end
local head = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local score = tonumber(redis.call('GET', KEYS[4]) or '0')
if head[2] then score = math.min(score, tonumber(head[2])) end
redis.call('ZADD', KEYS[2], score - 1, member)
redis.call('LPUSH', KEYS[1], ARGV[2])
return 1
"""


# KEYS: msgs sleases tries gleases ; ARGV: sid seq id attempt [deadline]. The lease of a
# claimed message, if it is still on this attempt and its seq holds no other message (a
# session deleted and made anew): without a deadline it is dropped (`ack_listen`), with
# one it is moved there (`renew_listen`). Returns 1 if found, else 0.
_SETTLE = """
local found = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], ARGV[2])[1]
if found then
  local body = string.sub(found, string.find(found, '|', 1, true) + 1)
  if cjson.decode(body)['id'] ~= ARGV[3] then return 0 end
end
if not redis.call('ZSCORE', KEYS[2], ARGV[2]) then return 0 end
if tonumber(redis.call('HGET', KEYS[3], ARGV[2]) or '0') ~= tonumber(ARGV[4]) then return 0 end
local member = ARGV[1] .. ' ' .. ARGV[2]
if ARGV[5] then
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[2])
  redis.call('ZADD', KEYS[4], ARGV[5], member)
else
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[4], member)
  redis.call('HDEL', KEYS[3], ARGV[2])
end
return 1
"""


class RedisStorage:
    """A `Storage` in Redis, shared by every bridge instance that uses the same URL."""

    def __init__(self, url: str, settings: Settings) -> None:
        self._target = RedisTarget.parse(url)
        self._keys = Keys(self._target.prefix)
        self._history_limit = settings.history_limit
        self._backlog_limit = settings.listen_backlog_per_session
        self._sessions_max = settings.sessions_max
        self._lease_s = settings.listen_lease_s
        self._attempts_max = settings.listen_attempts_max
        self._client: aioredis.Redis | None = None
        self._epoch = ""
        self._token_secret: bytes | None = None
        # Bound to the client in `open`.
        self._append: AsyncScript
        self._last_of_role: AsyncScript
        self._delete: AsyncScript
        self._reset: AsyncScript
        self._claim: AsyncScript
        self._release: AsyncScript
        self._settle: AsyncScript
        self._history: AsyncScript

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def url(self) -> str:
        return self._target.shown

    @property
    def prefix(self) -> str:
        """The key prefix this store writes under."""
        return self._target.prefix

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        client = self._target.connect("store")
        self._append = client.register_script(_APPEND)
        self._last_of_role = client.register_script(_LAST_OF_ROLE)
        self._delete = client.register_script(_DELETE)
        self._reset = client.register_script(_RESET)
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._settle = client.register_script(_SETTLE)
        self._history = client.register_script(_HISTORY)
        try:
            await self._adopt_epoch(client)
        except StorageUnavailable:
            await client.aclose()
            await client.connection_pool.aclose()
            raise
        self._client = client

    async def _adopt_epoch(self, client: aioredis.Redis) -> None:
        # The first instance to find no epoch names one; the others adopt it.
        with self._errors("read the epoch"):
            await client.set(self._keys.epoch, uuid.uuid4().hex, nx=True)
            epoch = await client.get(self._keys.epoch)
        if epoch is not None:
            self._epoch = as_text(epoch)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
            await client.connection_pool.aclose()

    async def ping(self) -> None:
        # Also re-reads the epoch: if Redis lost everything (restarted without
        # persistence) the first instance to notice names a new one, the others adopt it.
        await self._adopt_epoch(self._redis())
        if self._token_secret is not None:
            # Likewise the token secret: put back the one this instance signs with, or
            # adopt the one another instance put back first, so that all agree again.
            self._token_secret = await self._adopt_token_secret(self._token_secret.hex())

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise StorageUnavailable(f"{self.url} is not open")
        return self._client

    def _errors(self, what: str) -> AbstractContextManager[None]:
        return redis_errors(self._target.shown, what)

    def _session_keys(self, session_id: str) -> list[str]:
        k = self._keys
        return [
            k.session(session_id, "meta"),
            k.session(session_id, "msgs"),
            k.session(session_id, "keys"),
            k.session(session_id, "listen"),
            k.listen,
            k.sessions,
            k.order,
            k.listen_counter,
            k.session(session_id, "leases"),
            k.leases,
            k.session(session_id, "tries"),
        ]

    # -- writes ----------------------------------------------------------------------

    async def _run_append(
        self, session_id: str, mode: str, drafts: Sequence[Draft], key: str | None
    ) -> tuple[Any, list[StoredMessage]]:
        now = time.time()
        messages = [
            StoredMessage(d.id, session_id, 0, d.role, d.content, d.type, now, d.stopped)
            for d in drafts
        ]
        args: list[str | int | float] = [
            session_id,
            repr(now),
            self._history_limit,
            self._backlog_limit,
            mode,
            key or "",
            len(drafts),
            self._sessions_max,
        ]
        for d, m in zip(drafts, messages, strict=True):
            args += [_encode(m), d.role, d.key or ""]
        client = self._redis()
        with self._errors(f"{mode} in session {session_id!r}"):
            reply = await self._append(
                keys=self._session_keys(session_id), args=args, client=client
            )
        if reply[0] == 3:
            raise sessions_quota(int(reply[1]))
        return reply, messages

    @staticmethod
    def _numbered(messages: list[StoredMessage], last_seq: int) -> list[StoredMessage]:
        first = last_seq - len(messages) + 1
        return [
            StoredMessage(
                m.id, m.session_id, first + i, m.role, m.content, m.type, m.created_at, m.stopped
            )
            for i, m in enumerate(messages)
        ]

    async def create_session(
        self, session_id: str, seed: Sequence[Draft]
    ) -> tuple[StoredMessage, ...] | None:
        reply, messages = await self._run_append(session_id, "create", seed, None)
        if reply[0] == 0:
            return None
        return tuple(self._numbered(messages, int(reply[1])))

    async def append(self, session_id: str, draft: Draft, seed: Sequence[Draft]) -> Appended:
        reply, messages = await self._run_append(session_id, "append", [*seed, draft], draft.key)
        if reply[0] == 2:
            return Appended(_decode(session_id, reply[1]), (), True)
        last_seq, created = int(reply[1]), bool(reply[2])
        stored = self._numbered(messages if created else messages[-1:], last_seq)
        return Appended(stored[-1], tuple(stored), False)

    async def delete_session(self, session_id: str) -> bool:
        keys = self._session_keys(session_id)
        keys = [*keys[:6], *keys[8:]]  # not the counters
        with self._errors(f"delete session {session_id!r}"):
            deleted = await self._delete(keys=keys, args=[session_id], client=self._redis())
        return bool(deleted)

    async def reset(self) -> None:
        client = self._redis()
        k = self._keys
        keys = [k.sessions, k.listen, k.order, k.listen_counter, k.leases]
        with self._errors("reset"):
            while await self._reset(
                keys=keys, args=[self._keys.prefix, _RESET_BATCH], client=client
            ):
                pass

    async def save_template(self, template: Template) -> None:
        with self._errors("save the template"):
            await self._redis().set(self._keys.template, template.model_dump_json())

    async def claim_listen(
        self, session_id: str | None, now: float | None = None, *, exclusive: bool = False
    ) -> ListenClaim:
        when = time.time() if now is None else now
        k = self._keys
        keys = [k.listen, k.leases]
        if session_id is not None:
            keys += [k.session(session_id, p) for p in ("listen", "msgs", "leases", "tries")]
        args: list[str | int] = [
            k.prefix,
            session_id or "",  # never a session id: those have 1 character or more
            # repr keeps every digit; Lua would print a number with 14 only.
            repr(when),
            repr(when + self._lease_s),
            self._attempts_max,
            self._backlog_limit,
            1 if self._lease_s > 0 else 0,
            1 if exclusive else 0,
            _CLAIM_BATCH,
        ]
        with self._errors("claim a Listen message"):
            reply = await self._claim(keys=keys, args=args, client=self._redis())
        dropped = tuple(
            DroppedLease(as_text(reply[i]), int(reply[i + 1]), int(reply[i + 2]))
            for i in range(4, len(reply), 3)
        )
        if int(reply[0]) == 0:
            return ListenClaim(None, dropped)
        owner = as_text(reply[1])
        return ListenClaim(Claimed(_decode(owner, reply[2]), int(reply[3])), dropped)

    async def token_secret(self) -> bytes:
        if self._token_secret is None:
            self._token_secret = await self._adopt_token_secret(secrets.token_hex(32))
        return self._token_secret

    async def _adopt_token_secret(self, candidate: str) -> bytes:
        # SET NX: the first instance's secret wins and every other instance adopts it.
        client = self._redis()
        with self._errors("read the token secret"):
            await client.set(self._keys.token_secret, candidate, nx=True)
            stored = await client.get(self._keys.token_secret)
        return bytes.fromhex(as_text(stored) if stored is not None else candidate)

    async def release_listen(self, claimed: Claimed) -> None:
        k = self._keys
        message = claimed.message
        sid = message.session_id
        with self._errors("give back a Listen message"):
            await self._release(
                keys=[
                    k.session(sid, "listen"),
                    k.listen,
                    k.session(sid, "msgs"),
                    k.listen_counter,
                    k.session(sid, "leases"),
                    k.session(sid, "tries"),
                    k.leases,
                ],
                args=[sid, message.seq, message.id, claimed.attempt],
                client=self._redis(),
            )

    async def _run_settle(self, claimed: Claimed, deadline: float | None) -> bool:
        k = self._keys
        message = claimed.message
        sid = message.session_id
        args: list[str | int] = [sid, message.seq, message.id, claimed.attempt]
        if deadline is not None:
            args.append(repr(deadline))
        keys = [k.session(sid, "msgs"), k.session(sid, "leases"), k.session(sid, "tries")]
        with self._errors("settle a Listen lease"):
            found = await self._settle(keys=[*keys, k.leases], args=args, client=self._redis())
        return bool(found)

    async def ack_listen(self, claimed: Claimed) -> None:
        await self._run_settle(claimed, None)

    async def renew_listen(self, claimed: Claimed, now: float | None = None) -> bool:
        if self._lease_s <= 0:
            return False
        when = time.time() if now is None else now
        return await self._run_settle(claimed, when + self._lease_s)

    # -- reads -----------------------------------------------------------------------

    async def history(
        self,
        session_id: str,
        *,
        after: int = 0,
        before: int | None = None,
        last: int | None = None,
        max_bytes: int | None = None,
    ) -> list[StoredMessage]:
        key = self._keys.session(session_id, "msgs")
        low = f"({after}"
        high = "+inf" if before is None else f"({before}"
        client = self._redis()
        with self._errors(f"read the history of {session_id!r}"):
            if last is not None and last <= 0:
                return []
            if max_bytes is not None:
                members = await self._history(
                    keys=[key],
                    args=[low, high, -1 if last is None else last, max_bytes, _HISTORY_BATCH],
                    client=client,
                )
            elif last is None:
                members = await client.zrangebyscore(key, low, high)
            else:
                members = await client.zrevrangebyscore(key, high, low, start=0, num=last)
                members.reverse()
        return [_decode(session_id, m) for m in members]

    async def last_message(self, session_id: str, role: str | None) -> StoredMessage | None:
        client = self._redis()
        with self._errors(f"read the last message of {session_id!r}"):
            if role is None:
                members = await client.zrange(self._keys.session(session_id, "msgs"), -1, -1)
                member = members[0] if members else None
            else:
                member = await self._last_of_role(
                    keys=[
                        self._keys.session(session_id, "meta"),
                        self._keys.session(session_id, "msgs"),
                    ],
                    args=[role],
                    client=client,
                )
        return None if member is None else _decode(session_id, member)

    async def session_info(self, session_id: str) -> SessionInfo | None:
        client = self._redis()
        with self._errors(f"read session {session_id!r}"):
            async with client.pipeline(transaction=True) as pipe:
                pipe.hmget(self._keys.session(session_id, "meta"), "created_at", "last_seq")
                pipe.zcard(self._keys.session(session_id, "msgs"))
                (created_at, last_seq), count = await pipe.execute()
        if created_at is None:
            return None
        return SessionInfo(session_id, float(created_at), int(last_seq or 0), int(count))

    async def sessions(self, *, offset: int = 0, limit: int | None = None) -> list[str]:
        check_page(offset, limit)
        if limit == 0:
            return []  # ZRANGE's stop is inclusive: offset - 1 would mean "to the end"
        stop = -1 if limit is None else offset + limit - 1
        with self._errors("list sessions"):
            members = await self._redis().zrange(self._keys.sessions, offset, stop)
        return [as_text(m) for m in members]

    async def last_session(self) -> str | None:
        with self._errors("read the last session"):
            members = await self._redis().zrange(self._keys.sessions, -1, -1)
        return as_text(members[0]) if members else None

    async def load_template(self) -> Template | None:
        with self._errors("load the template"):
            body = await self._redis().get(self._keys.template)
        return None if body is None else Template.model_validate_json(body)
