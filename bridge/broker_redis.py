"""The broker of several bridge instances sharing one Redis (`redis://` store URLs).

Events: one pub/sub channel per key prefix, `P:events`, that every instance subscribes
to. A per-session channel would spare an instance the events of sessions it does not
serve, but Listen calls for *any* session must hear of every user message, streams in
progress are remembered for late joiners, and `template` / global `reset` events go to
all: every instance needs every event anyway. One channel also gives one order: Redis
hands messages to each subscriber in the order it executed the PUBLISH commands.

An instance delivers its own events only when they come back from Redis, never
directly: so each event reaches each hub exactly once, and in the same order on every
instance. (The publisher keeps the `Event` object until it returns, so it is not parsed
again and its publish-to-send time covers the round trip.)

Order: the service stores and publishes a session's message under `lock(session_id)`,
a lock held across instances: a local `KeyedLocks` in front (an instance never
contends with itself), then `SET NX PX` with a token, released by a script only if the
token still matches. The events the holder publishes for that session meanwhile are
queued and sent by that release script, just before it deletes the lock: one round trip
for both, and nobody can publish for the session in between. A waiter is woken by a
release notice on the channel (sent only if someone waited), with a short poll as a
safety net; it gives up with `StorageUnavailable` after `LOCK_WAIT_S`. A lock expires
after `LOCK_TTL_MS` if its holder died.

Gaps: an instance killed between storing a message and publishing it leaves a seq that
no instance ever receives. For each session with subscribers here, the broker tracks the
last seq it delivered; a message event that skips seqs first makes it read the missing
ones from storage and deliver them (as `message` events); if the skipped event shows up
after all, it is not delivered twice. The same catch-up runs after the pub/sub
connection was lost and is back. The broker reads the store only through the `Storage`
interface it was given (`history` in pages of `_FILL_PAGE_BYTES`, and `session_info` for
the seq to track from), never the store's keys: `open_backend` hands it the very store
the service writes to.

Presence: `P:presence:{sid}` is a hash of instance id -> subscribers there. An instance
refreshes `P:instance:{id}` (a key with a TTL) every few seconds; fields of instances
whose key expired (killed) are dropped when counted. Each instance rewrites its own
fields now and then, so the counts heal after Redis lost them.

The broker's keys, beside the store's under the same prefix `P` (see `_Keys`):

    P:events                channel  every event, and the lock release notices
    P:lock:{sid}            string   the session lock: the holder's token, with a TTL
    P:lockwait:{sid}        string   someone waits: the holder announces its release
    P:presence:{sid}        hash     instance id -> subscribers of the session there
    P:instance:{id}         string   an instance is alive (refreshed, with a TTL)
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    suppress,
)
from contextvars import ContextVar
from dataclasses import dataclass

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.client import PubSub
from redis.commands.core import AsyncScript

from bridge.broker import Deliver
from bridge.errors import StorageUnavailable
from bridge.events import ALL_SESSIONS, Event
from bridge.ordering import KeyedLocks
from bridge.storage.base import Storage
from bridge.storage.redis_target import RedisTarget, redis_errors

__all__ = ["LOCK_TTL_MS", "LOCK_WAIT_S", "RedisBroker"]

log = logging.getLogger("bridge.redis")

LOCK_TTL_MS = 4000
"""How long a session lock outlives a holder that died (it is normally held ~1 ms)."""
LOCK_WAIT_S = 6.0
"""How long a store-and-publish waits for the session lock before answering 503."""
_LOCK_POLL_S = 0.05
_HEARTBEAT_S = 5.0
_INSTANCE_TTL_MS = 15_000
_RESYNC_EVERY = 12  # heartbeats between rewrites of this instance's presence fields
_PRESENCE_TTL_S = 3600
_OWN_MAX = 10_000
_RECONNECT_MAX_S = 2.0
_CATCH_UP_MAX = 10_000  # messages read per session when catching up after an outage
_FILL_PAGE_BYTES = 2 * 1024 * 1024  # `max_bytes` of each history page a catch-up reads
_UNLOCK = b"!unlock|"

# KEYS: lock wait ; ARGV: token ttl_ms. 1 if taken; else 0 and the holder is asked to
# announce its release.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return 0
"""

# KEYS: lock wait ; ARGV: token channel notice payload... Publish the events of the
# session published while it was held (they are stored: they go out even if the lock
# expired meanwhile), then release the lock if it is still ours.
_RELEASE = """
for i = 4, #ARGV do redis.call('PUBLISH', ARGV[2], ARGV[i]) end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if redis.call('DEL', KEYS[2]) == 1 then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return 1
"""

# KEYS: presence ; ARGV: instance delta prefix ttl. Returns the subscribers over live
# instances.
_PRESENCE = """
local delta = tonumber(ARGV[2])
if delta ~= 0 then
  if redis.call('HINCRBY', KEYS[1], ARGV[1], delta) <= 0 then
    redis.call('HDEL', KEYS[1], ARGV[1])
  end
end
local total = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if redis.call('EXISTS', ARGV[3] .. ':instance:' .. all[i]) == 1 then
    total = total + math.max(0, tonumber(all[i + 1]))
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
if #all > 0 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
return total
"""


@dataclass(frozen=True, slots=True)
class _Keys:
    """The broker's keys and channel under a prefix (the list is in the module doc)."""

    prefix: str

    @property
    def events(self) -> str:
        """The pub/sub channel of every event of this prefix."""
        return f"{self.prefix}:events"

    def lock(self, session_id: str) -> str:
        return f"{self.prefix}:lock:{session_id}"

    def lock_wait(self, session_id: str) -> str:
        return f"{self.prefix}:lockwait:{session_id}"

    def presence(self, session_id: str) -> str:
        return f"{self.prefix}:presence:{session_id}"

    def instance(self, instance_id: str) -> str:
        return f"{self.prefix}:instance:{instance_id}"


async def _close(pubsub: PubSub) -> None:
    await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py 8.1


class RedisBroker:
    """A `Broker` over Redis pub/sub, with cross-instance session locks and presence.

    `storage` is the store every instance shares (normally the Redis store of the same
    URL, as `open_backend` pairs them): missed messages are read back from it through
    the `Storage` interface. The broker does not open or close it."""

    def __init__(self, url: str, storage: Storage) -> None:
        self._target = RedisTarget.parse(url)
        self._keys = _Keys(self._target.prefix)
        self._storage = storage
        self.instance_id = uuid.uuid4().hex[:12]
        self._instance = self.instance_id.encode()
        self._deliver: Deliver | None = None
        self._client: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._counter = itertools.count(1)
        # Own events between PUBLISH and their return, to deliver the object itself.
        self._own: OrderedDict[int, Event] = OrderedDict()
        self._locks = KeyedLocks()
        self._wakeups: dict[str, asyncio.Event] = {}
        # Subscribers on this instance per session, and the last seq delivered for
        # each of those sessions (the gap check); both bounded by local sockets.
        self._local: dict[str, int] = {}
        self._tracked: dict[str, int] = {}
        # The highest seq a catch-up read delivered per session: the same message
        # arriving over pub/sub afterwards is not delivered twice.
        self._filled: dict[str, int] = {}
        # (session id, events to publish on release) while this task holds its lock.
        self._held: ContextVar[tuple[str, list[bytes]] | None] = ContextVar(
            f"redis-broker-held-{self.instance_id}", default=None
        )
        self._acquire: AsyncScript
        self._release: AsyncScript
        self._presence: AsyncScript

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, deliver: Deliver) -> None:
        client = self._target.connect(f"broker:{self.instance_id}")
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._presence = client.register_script(_PRESENCE)
        self._client = client
        self._deliver = deliver
        try:
            with self._errors("start"):
                await self._beat(client)
            pubsub = await self._subscribe(client)
        except BaseException:
            await self._disconnect()
            raise
        self._tasks = [
            asyncio.create_task(self._listen(pubsub), name="redis-broker-listen"),
            asyncio.create_task(self._heartbeat(), name="redis-broker-heartbeat"),
        ]
        log.info(
            "redis broker %s on %s (channel %s)",
            self.instance_id,
            self._target.shown,
            self._keys.events,
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._deliver = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        client = self._client
        if client is not None:
            # Best effort: tell the others at once that our subscribers are gone.
            with suppress(redis.exceptions.RedisError, OSError, TimeoutError):
                async with asyncio.timeout(2.0), client.pipeline(transaction=False) as pipe:
                    pipe.delete(self._keys.instance(self.instance_id))
                    for session_id in self._local:
                        pipe.hdel(self._keys.presence(session_id), self.instance_id)
                    await pipe.execute()
        await self._disconnect()

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
            await client.connection_pool.aclose()

    def _errors(self, what: str) -> AbstractContextManager[None]:
        return redis_errors(self._target.shown, what)

    def _redis(self) -> aioredis.Redis:
        if self._client is None or self._closed:
            raise StorageUnavailable("the bridge is shutting down")
        return self._client

    # -- publishing ----------------------------------------------------------------

    async def publish(self, event: Event) -> None:
        if self._closed or self._client is None:
            return
        counter = next(self._counter)
        self._own[counter] = event
        if len(self._own) > _OWN_MAX:
            self._own.popitem(last=False)  # lost on the way; it is parsed if it ever comes
        payload = f"{self.instance_id}|{counter}|{event.session_id}|{event.frame}"
        held = self._held.get()
        if held is not None and held[0] == event.session_id:
            # Inside the session's lock: sent with the release, one round trip for both.
            held[1].append(payload.encode("utf-8", "surrogatepass"))
            return
        try:
            with self._errors("publish"):
                await self._client.publish(
                    self._keys.events, payload.encode("utf-8", "surrogatepass")
                )
        except StorageUnavailable as exc:
            # The message (if any) is stored already: answering 503 would invite a second
            # copy. Subscribers get it from storage when the next one shows the gap.
            self._own.pop(counter, None)
            log.warning(
                "event %s of session %r not published: %s", event.kind, event.session_id, exc.detail
            )

    # -- receiving -----------------------------------------------------------------

    async def _subscribe(self, client: aioredis.Redis) -> PubSub:
        """Subscribe, and return only once Redis confirmed it: a PUBLISH made after that
        (on any connection) is certain to come back to us."""
        pubsub = client.pubsub()
        try:
            with self._errors("subscribe"):
                await pubsub.subscribe(self._keys.events)
                async with asyncio.timeout(5.0):
                    while True:
                        reply = await pubsub.get_message(timeout=1.0)
                        if reply is not None and reply["type"] == "subscribe":
                            return pubsub
        except TimeoutError:
            await _close(pubsub)
            raise StorageUnavailable(
                f"redis at {self._target.shown} did not confirm the subscription within 5 s"
            ) from None
        except BaseException:
            await _close(pubsub)
            raise

    async def _listen(self, pubsub: PubSub | None) -> None:
        delay = 0.1
        while True:
            try:
                if pubsub is None:
                    pubsub = await self._subscribe(self._redis())
                    log.warning("redis pub/sub reconnected; catching up from storage")
                    await self._catch_up()
                    await self._resync_presence()
                    delay = 0.1
                while True:
                    reply = await pubsub.get_message(timeout=1.0)
                    if reply is not None and reply["type"] == "message":
                        await self._on_payload(reply["data"])
            except asyncio.CancelledError:
                if pubsub is not None:
                    await _close(pubsub)
                raise
            except Exception as exc:
                if isinstance(exc, redis.exceptions.RedisError | StorageUnavailable | OSError):
                    log.warning(
                        "redis pub/sub connection lost (%s); reconnecting in %.1fs", exc, delay
                    )
                else:  # a bug: keep delivering rather than go silent
                    log.exception("redis pub/sub listener failed; restarting in %.1fs", delay)
                if pubsub is not None:
                    with suppress(Exception):  # the connection is broken already
                        await _close(pubsub)
                pubsub = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RECONNECT_MAX_S)

    async def _on_payload(self, data: bytes) -> None:
        if data.startswith(_UNLOCK):
            wakeup = self._wakeups.get(data[len(_UNLOCK) :].decode())
            if wakeup is not None:
                wakeup.set()
            return
        try:
            instance, counter, session, frame = data.split(b"|", 3)
            event = self._own.pop(int(counter), None) if instance == self._instance else None
            if event is None:
                event = Event.from_frame(session.decode(), frame.decode("utf-8", "surrogatepass"))
        except (ValueError, KeyError) as exc:  # not ours, or corrupt: skip, keep listening
            log.warning("ignored a malformed event on %s: %s", self._keys.events, exc)
            return
        if event.seq is not None:
            last = self._tracked.get(event.session_id)
            if last is not None:
                if event.kind == "message" and event.seq <= self._filled.get(event.session_id, 0):
                    return  # a catch-up read delivered it already
                if event.seq > last + 1:
                    await self._fill(event.session_id, last, event.seq)
                if event.seq > self._tracked.get(event.session_id, 0):
                    self._tracked[event.session_id] = event.seq
        elif event.kind == "reset":
            # The history is gone: its next message is seq 1 again.
            if event.session_id == ALL_SESSIONS:
                self._tracked = dict.fromkeys(self._tracked, 0)
                self._filled.clear()
            elif event.session_id in self._tracked:
                self._tracked[event.session_id] = 0
                self._filled.pop(event.session_id, None)
        self._dispatch(event)

    def _dispatch(self, event: Event) -> None:
        if self._deliver is None:
            return
        try:
            self._deliver(event)
        except Exception:  # one bad event must not stop the listener for every session
            log.exception(
                "delivering a %s event of session %r failed", event.kind, event.session_id
            )

    async def _fill(self, session_id: str, last: int, upto: int | None) -> None:
        """Deliver the stored messages of `session_id` with `last < seq < upto` (all
        after `last` if `upto` is None; at most `_CATCH_UP_MAX`), read from the store
        in pages of about `_FILL_PAGE_BYTES`."""
        delivered = 0
        cursor = last
        while delivered < _CATCH_UP_MAX and not self._closed:
            try:
                page = await self._storage.history(
                    session_id, after=cursor, before=upto, max_bytes=_FILL_PAGE_BYTES
                )
            except StorageUnavailable as exc:
                log.warning("could not fill a gap in session %r: %s", session_id, exc.detail)
                break
            if not page:
                break
            for message in page[: _CATCH_UP_MAX - delivered]:
                if session_id in self._tracked:  # its last local subscriber may have left
                    self._tracked[session_id] = max(self._tracked[session_id], message.seq)
                    self._filled[session_id] = max(self._filled.get(session_id, 0), message.seq)
                self._dispatch(Event.message(message))
                delivered += 1
            cursor = page[-1].seq
            del page  # not held while the next page is read
        if upto is not None and delivered:
            log.warning(
                "session %r: delivered %d stored message(s) that pub/sub skipped "
                "(an instance stopped between store and publish, or a lock expired)",
                session_id,
                delivered,
            )

    async def _catch_up(self) -> None:
        for session_id, last in list(self._tracked.items()):
            await self._fill(session_id, last, None)

    # -- the cross-instance session lock ---------------------------------------------

    def lock(self, session_id: str) -> AbstractAsyncContextManager[None]:
        return self._hold(session_id)

    @asynccontextmanager
    async def _hold(self, session_id: str) -> AsyncIterator[None]:
        async with self._locks(session_id):
            token = await self._take(session_id)
            pending: list[bytes] = []
            # The holder's task (and only it) sees which session it holds: `publish`
            # queues that session's events for the release.
            entered = self._held.set((session_id, pending))
            try:
                yield
            finally:
                self._held.reset(entered)
                await asyncio.shield(self._give_back(session_id, token, pending))

    async def _take(self, session_id: str) -> str:
        client = self._redis()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_WAIT_S
        token = f"{self.instance_id}:{next(self._counter)}"
        keys = [self._keys.lock(session_id), self._keys.lock_wait(session_id)]
        # One waiter per session per instance: the local lock is held around this.
        wakeup = self._wakeups[session_id] = asyncio.Event()
        try:
            while True:
                wakeup.clear()
                with self._errors(f"lock session {session_id!r}"):
                    if await self._acquire(keys=keys, args=[token, LOCK_TTL_MS], client=client):
                        return token
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise StorageUnavailable(
                        f"session {session_id!r} stayed locked by another bridge instance "
                        f"for {LOCK_WAIT_S:g}s; retry"
                    )
                with suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), min(remaining, _LOCK_POLL_S))
        finally:
            del self._wakeups[session_id]

    async def _give_back(self, session_id: str, token: str, pending: list[bytes]) -> None:
        client = self._client
        if client is None:
            return
        try:
            with self._errors(f"unlock session {session_id!r}"):
                released = await self._release(
                    keys=[self._keys.lock(session_id), self._keys.lock_wait(session_id)],
                    args=[token, self._keys.events, _UNLOCK + session_id.encode(), *pending],
                    client=client,
                )
        except StorageUnavailable as exc:
            # Stored messages among `pending` reach subscribers through the gap check.
            log.warning(
                "%s (%d event(s) not published); the lock expires by itself within %d ms",
                exc.detail,
                len(pending),
                LOCK_TTL_MS,
            )
            return
        if not released:
            log.warning(
                "the lock of session %r expired while held (over %d ms): publish "
                "order may have differed from seq order; subscribers fill gaps "
                "from storage",
                session_id,
                LOCK_TTL_MS,
            )

    # -- presence --------------------------------------------------------------------

    async def presence(self, session_id: str, delta: int) -> int:
        before = self._local.get(session_id, 0)
        after = before + delta
        if after > 0:
            self._local[session_id] = after
        else:
            self._local.pop(session_id, None)
            self._tracked.pop(session_id, None)
            self._filled.pop(session_id, None)
        client = self._client
        if client is None or self._closed:
            return max(after, 0)  # shutting down: sockets leave after the broker closed
        track = after > 0 and session_id not in self._tracked
        try:
            with self._errors(f"count subscribers of {session_id!r}"):
                total = await self._presence(
                    keys=[self._keys.presence(session_id)],
                    args=[self.instance_id, delta, self._keys.prefix, _PRESENCE_TTL_S],
                    client=client,
                )
            # Where gap checks start: the session's last seq, read after the count.
            info = await self._storage.session_info(session_id) if track else None
        except StorageUnavailable as exc:
            if delta >= 0:
                raise
            # A socket leaving must not fail: the next resync writes the right count.
            log.warning("presence of %r not updated: %s", session_id, exc.detail)
            return max(after, 0)
        if track and session_id in self._local and session_id not in self._tracked:
            # From here on, a message event that skips seqs after this one is a gap.
            self._tracked[session_id] = info.last_seq if info is not None else 0
        return int(total)

    async def _beat(self, client: aioredis.Redis) -> None:
        await client.set(self._keys.instance(self.instance_id), b"1", px=_INSTANCE_TTL_MS)

    async def _heartbeat(self) -> None:
        failing = False
        for beat in itertools.count(1):
            await asyncio.sleep(_HEARTBEAT_S)
            try:
                with self._errors("heartbeat"):
                    await self._beat(self._redis())
                if beat % _RESYNC_EVERY == 0 or failing:
                    await self._resync_presence()
            except StorageUnavailable as exc:
                if not failing:
                    log.warning("redis heartbeat failed: %s", exc.detail)
                failing = True
                continue
            if failing:
                log.warning("redis heartbeat back")
            failing = False

    async def _resync_presence(self) -> None:
        """Rewrite this instance's presence fields (they heal after Redis lost them)."""
        client = self._redis()
        items = list(self._local.items())
        for start in range(0, len(items), 500):
            with self._errors("resync presence"):
                async with client.pipeline(transaction=False) as pipe:
                    for session_id, count in items[start : start + 500]:
                        key = self._keys.presence(session_id)
                        pipe.hset(key, self.instance_id, count)
                        pipe.expire(key, _PRESENCE_TTL_S)
                    await pipe.execute()
