"""The bridge's use cases; the one place that orders "store, then publish".

Every message of a session is stored and published while holding that session's lock
(`Broker.lock`: per process, or across instances with Redis), so `seq` order and publish
order are the same on every socket, however many requests race. The store-then-publish
step is shielded from cancellation: a client that hangs up after its message was
committed cannot leave it committed but unpublished.

The transports (`api.py`, `ws.py`, `health.py`, `server.py`) parse, call one method here,
and write the answer; none of them reaches into the store, the broker or the hub. A
WebSocket is `subscribe`: join the hub, hello, replay, live, in that order, so that no
message falls between the replay and the live stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bridge.broker import Broker
from bridge.errors import (
    BridgeError,
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    SessionDeleted,
    TimedOut,
)
from bridge.events import ALL_SESSIONS, Event
from bridge.hub import Closer, Hub, Subscriber
from bridge.listen import ListenBoard
from bridge.metrics import Metrics
from bridge.models import (
    ROLES,
    Draft,
    MessageIn,
    SessionInfo,
    StoredMessage,
    Template,
    check_session_id,
)
from bridge.outbox import OutboxClosed, Send
from bridge.paging import history_pages
from bridge.settings import Settings
from bridge.storage import Claimed, Storage
from bridge.wire import CLOSE_GOING_AWAY, CLOSE_POLICY, TOKEN_EXPIRED, WELCOME_ID, Listened

__all__ = ["BridgeService", "Listened", "SessionView", "Subscription"]

log = logging.getLogger("bridge")

_STOP = "stop"  # the broker event that ends every reply streaming in its session
_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")


@dataclass(frozen=True, slots=True)
class SessionView:
    """A session's counters plus its live subscriber count."""

    info: SessionInfo
    subscribers: int
    epoch: str

    def to_dict(self) -> dict[str, object]:
        """The JSON of `GET /api/v1/sessions/{id}`."""
        return {
            "session_id": self.info.session_id,
            "created_at": self.info.created_at,
            "last_seq": self.info.last_seq,
            "message_count": self.info.message_count,
            "subscribers": self.subscribers,
            "epoch": self.epoch,
        }


class BridgeService:
    """Sessions, messages, streams, Listen, subscriptions and the template, over a store,
    a broker and this process's hub (which it owns: nothing else reaches them)."""

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        broker: Broker,
        hub: Hub,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        """The settings in force (read only)."""
        self._storage = storage
        self._broker = broker
        self._hub = hub
        self._metrics = metrics
        self._listen = ListenBoard(max_waiters=settings.listen_waiters_max)
        self._template = Template()
        self._presence_due: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        # The stop signal of each reply streaming through this instance, by session: a
        # stop (from any instance, through the broker) resolves every one of them.
        # The future's result says why: `_STOP` (store what came) or "reset" (the session
        # was deleted: store nothing, or the reply would create it again).
        self._stops: dict[str, set[asyncio.Future[str]]] = {}
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Load the template and begin receiving events from the broker (the store is
        open already)."""
        self._template = await self._storage.load_template() or Template()
        await self._broker.start(self._on_event)

    @property
    def store_url(self) -> str:
        """The store's URL as it may be shown (no password)."""
        return self._storage.url

    async def ready(self) -> str:
        """Check that the store answers; return its URL as `store_url` does.
        Raises `StorageUnavailable` if it does not."""
        await self._storage.ping()
        return self._storage.url

    async def shutdown(self) -> None:
        """The first step of stopping, while the server still runs: answer every waiting
        Listen call now (204) and close every socket with 1001, waiting until the close
        frames are out. In-flight requests finish after this; a second call does nothing
        more."""
        self._closing = True
        self._listen.close()
        await self._hub.close_all(CLOSE_GOING_AWAY, "bridge shutting down")

    @property
    def closing(self) -> bool:
        """True once `shutdown` began: waits for work (Listen, runs) end at once."""
        return self._closing

    async def stop(self) -> None:
        """The last step, once no request runs: `shutdown` if it has not run, then wait
        for background announcements. The broker and store are closed after this."""
        await self.shutdown()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def _on_event(self, event: Event) -> None:
        kind = event.kind
        if kind == _STOP:  # an instruction between instances, not a frame for tabs
            self._end_streams(event.session_id, _STOP)
            return
        if kind == "reset":
            self._end_streams(event.session_id, "reset")
        self._hub.dispatch(event)
        if event.user_message:
            self._listen.notify(event.session_id)
        elif kind == "run.end":
            # The session's next user message may be run now (by any instance's runner).
            self._listen.notify(event.session_id)
        elif kind == "template":
            self._template = Template.model_validate(event.data["template"])

    def _end_streams(self, session_id: str, why: str) -> None:
        ended = (
            self._stops.values()
            if session_id == ALL_SESSIONS
            else (self._stops.get(session_id, ()),)
        )
        for stops in ended:
            for stop in stops:
                if not stop.done():
                    stop.set_result(why)

    @property
    def template(self) -> Template:
        """The chat template in force."""
        return self._template

    def _welcome(self) -> tuple[Draft, ...]:
        # A fixed id lets pages recognise the welcome (and show the current template's
        # text there); no idempotency key, so a client's own id "welcome" is not blocked.
        text = self._template.welcome_msg
        return (Draft("ai", text, "text", WELCOME_ID, None),) if text else ()

    # -- validation --------------------------------------------------------------------

    def _check_content(self, content: str) -> None:
        size = len(content.encode("utf-8", "surrogatepass"))
        if size > self.settings.max_message_bytes:
            raise PayloadTooLarge(
                f"content is {size} bytes; the limit is {self.settings.max_message_bytes}"
            )

    @staticmethod
    def _check_key(key: str | None) -> str | None:
        if key is None:
            return None
        if not 1 <= len(key) <= 128 or not set(key) <= _KEY_CHARS:
            raise InvalidInput("Idempotency-Key must be 1-128 of A-Z a-z 0-9 _ . : -")
        return key

    @staticmethod
    def _check_role(role: str) -> str:
        if role not in ROLES:
            raise InvalidInput(f"unknown role {role[:40]!r}: use one of {', '.join(ROLES)}")
        return role

    # -- sessions ----------------------------------------------------------------------

    def epoch(self, info: SessionInfo) -> str:
        """The epoch of one session's history: the store's epoch and the session's birth.
        A session deleted and created again has a new one, so old `after` values are void."""
        return f"{self._storage.epoch}.{round(info.created_at * 1e6)}"

    async def create_session(self, session_id: str) -> list[StoredMessage]:
        """Create the session with the welcome message if new; return its messages."""
        check_session_id(session_id)
        created = await asyncio.shield(self._create_and_publish(session_id))
        if created is not None:
            return list(created)
        return await self._storage.history(session_id)

    async def _create_and_publish(self, session_id: str) -> tuple[StoredMessage, ...] | None:
        async with self._broker.lock(session_id):
            created = await self._storage.create_session(session_id, self._welcome())
            for message in created or ():
                await self._broker.publish(Event.message(message))
            if created:
                self._metrics.messages.inc(len(created))
            return created

    async def ensure_session(self, session_id: str) -> SessionInfo:
        """The session's counters, creating it (with the welcome message) if new."""
        info = await self._storage.session_info(check_session_id(session_id))
        if info is None:
            await self.create_session(session_id)
            info = await self._storage.session_info(session_id)
        if info is None:  # deleted again in between; report rather than guess
            raise NotFound(f"session {session_id!r} was deleted while it was being opened")
        return info

    async def session(self, session_id: str) -> SessionView:
        """Counters and subscribers of an existing session."""
        info = await self._storage.session_info(check_session_id(session_id))
        if info is None:
            raise NotFound(f"no session {session_id!r}")
        subscribers = await self._broker.presence(session_id, 0)
        return SessionView(info, subscribers, self.epoch(info))

    async def sessions(self, offset: int = 0, limit: int | None = None) -> list[str]:
        """Session ids in creation order, `limit` of them (at most `list_limit_max`, the
        default) from `offset` on: a listing never builds more than one page."""
        cap = self.settings.list_limit_max
        if limit is None:
            limit = cap
        if not 1 <= limit <= cap:
            raise InvalidInput(f"limit must be 1..{cap} (BRIDGE_LIST_LIMIT_MAX)")
        if offset < 0:
            raise InvalidInput("offset must be 0 or more")
        return await self._storage.sessions(offset=offset, limit=limit)

    async def last_session(self) -> str:
        """The most recently created session id."""
        last = await self._storage.last_session()
        if last is None:
            raise NotFound("no session has been created yet")
        return last

    async def delete_session(self, session_id: str) -> None:
        """Delete a session and its history; its subscribers get `reset`."""
        check_session_id(session_id)
        async with self._broker.lock(session_id):
            if not await self._storage.delete_session(session_id):
                raise NotFound(f"no session {session_id!r}")
            await self._broker.publish(Event.of(session_id, "reset"))

    async def reset_all(self) -> None:
        """Delete every session (the documented `POST /reset/messages`)."""
        await self._storage.reset()
        await self._broker.publish(Event.of(ALL_SESSIONS, "reset"))

    async def history(self, session_id: str, limit: int = 0) -> AsyncIterator[list[StoredMessage]]:
        """The last `limit` messages of an existing session (0: all that are kept), in
        pages of about `replay_buffer_bytes`: a reader of a large session holds one page
        at a time, not the whole history. Raises `NotFound` before the first page."""
        check_session_id(session_id)
        if limit < 0:
            raise InvalidInput("limit must be 0 (all) or a positive number")
        info = await self._storage.session_info(session_id)
        if info is None:
            raise NotFound(f"no session {session_id!r}")
        return history_pages(
            self._storage,
            info,
            last=limit or None,
            budget_bytes=self.settings.replay_buffer_bytes,
        )

    async def last_message(self, session_id: str, role: str = "any") -> StoredMessage:
        """The newest message of the session, of `role` unless it is `any`."""
        check_session_id(session_id)
        wanted = None if role == "any" else self._check_role(role)
        message = await self._storage.last_message(session_id, wanted)
        if message is None:
            what = "message" if wanted is None else f"{wanted!r} message"
            raise NotFound(f"session {session_id!r} has no {what}")
        return message

    # -- publishing --------------------------------------------------------------------

    async def post(
        self, session_id: str, message: MessageIn, idempotency_key: str | None = None
    ) -> StoredMessage:
        """Store `message` as the session's next one (creating the session if new) and
        publish it. A repeated idempotency key returns the first result instead."""
        check_session_id(session_id)
        self._check_content(message.content)
        key = self._check_key(idempotency_key) or message.id
        draft = Draft.build(message.role, message.content, message.type, message.id, key)
        return await asyncio.shield(self._append_and_publish(session_id, draft, None))

    async def _append_and_publish(
        self, session_id: str, draft: Draft, stream_id: str | None
    ) -> StoredMessage:
        async with self._broker.lock(session_id):
            appended = await self._storage.append(session_id, draft, self._welcome())
            if appended.duplicate and stream_id is not None:
                await self._broker.publish(
                    Event.of(
                        session_id,
                        "stream.abort",
                        stream_id=stream_id,
                        detail="duplicate: this idempotency key was already used",
                    )
                )
            for stored in appended.stored:
                if stream_id is not None and stored.id == draft.id:
                    await self._broker.publish(Event.stream_end(stream_id, stored))
                else:
                    await self._broker.publish(Event.message(stored))
        if appended.duplicate:
            first = appended.message
            if (first.role, first.content, first.type) != (draft.role, draft.content, draft.type):
                raise Conflict(
                    f"idempotency key {draft.key!r} was already used in session "
                    f"{session_id!r} for a different message (seq {first.seq}); "
                    "use a new key for new content"
                )
            self._metrics.duplicates.inc()
        else:
            self._metrics.messages.inc(len(appended.stored))
        return appended.message

    async def stream(
        self,
        session_id: str,
        role: str,
        chunks: AsyncIterator[str],
        idempotency_key: str | None = None,
        *,
        run_id: str | None = None,
        idle_timeout: tuple[float, str] | None = None,
    ) -> StoredMessage:
        """Publish a reply as it arrives, chunk by chunk, then store it whole.

        If the chunks fail (bad input, too large, the sender hung up) subscribers get
        `stream.abort` and nothing is stored. A stop of the session (`stop_replies`, from any
        instance) ends it early: the rest of `chunks` is not read, and what arrived is
        stored with `stopped` set. `run_id` names the run that produces it (in
        `stream.start`); `idle_timeout` replaces `stream_idle_timeout_s` with
        (seconds, the setting's name for the error).
        """
        check_session_id(session_id)
        self._check_role(role)
        key = self._check_key(idempotency_key)
        await self.ensure_session(session_id)
        stream_id = uuid.uuid4().hex
        started = {"run_id": run_id} if run_id else {}
        stop: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        stops = self._stops.setdefault(session_id, set())
        stops.add(stop)
        try:
            await self._broker.publish(
                Event.of(session_id, "stream.start", stream_id=stream_id, role=role, **started)
            )
            try:
                text, stopped = await self._relay(session_id, stream_id, chunks, stop, idle_timeout)
            except BaseException as exc:
                detail = getattr(exc, "detail", None) or "the sender stopped before the end"
                abort = Event.of(session_id, "stream.abort", stream_id=stream_id, detail=detail)
                await asyncio.shield(self._broker.publish(abort))
                raise
        finally:
            stops.discard(stop)
            if not stops and self._stops.get(session_id) is stops:
                del self._stops[session_id]
        draft = Draft(role, text, "text", stream_id, key, stopped=stopped)
        return await asyncio.shield(self._append_and_publish(session_id, draft, stream_id))

    async def stop_replies(self, session_id: str) -> None:
        """End every reply streaming in the session now, on whichever instance: each is
        stored as far as it came, marked `stopped` (a run's request to its flow is
        closed, a `/messages/stream` request is answered)."""
        check_session_id(session_id)
        await self._broker.publish(Event.of(session_id, _STOP))

    async def _relay(
        self,
        session_id: str,
        stream_id: str,
        chunks: AsyncIterator[str],
        stop: asyncio.Future[str],
        idle_timeout: tuple[float, str] | None,
    ) -> tuple[str, bool]:
        """Publish `chunks` as `stream.delta` events; return the whole text and whether
        a stop ended it.

        Deltas are merged so that a stream costs subscribers at most one frame per
        `stream_coalesce_s` (a 28 KB NDJSON body of 2,000 tiny deltas would otherwise be
        2,000 frames per subscriber, enough to overflow every viewer's buffer). The
        body is bounded in size, in silence (`stream_idle_timeout_s` between chunks) and
        in length (`stream_max_s`), so a stream that never ends cannot pin a request.
        """
        settings = self.settings
        loop = asyncio.get_running_loop()
        limit = settings.max_message_bytes
        idle_s, idle_name = idle_timeout or (
            settings.stream_idle_timeout_s,
            "BRIDGE_STREAM_IDLE_TIMEOUT_S",
        )
        end_by = loop.time() + settings.stream_max_s
        idle_until = loop.time() + idle_s
        stopped = False
        send_at = 0.0  # loop time from which the next delta may go out
        parts: list[str] = []
        unsent: list[str] = []
        size = 0
        source = aiter(chunks)
        reading: asyncio.Future[str] | None = None

        async def flush() -> None:
            nonlocal send_at
            delta = "".join(unsent)
            unsent.clear()
            send_at = loop.time() + settings.stream_coalesce_s
            await self._broker.publish(
                Event.of(session_id, "stream.delta", stream_id=stream_id, delta=delta)
            )

        try:
            while True:
                if reading is None:
                    reading = asyncio.ensure_future(anext(source))
                due = min(idle_until, end_by, send_at if unsent else end_by)
                done, _ = await asyncio.wait(
                    (reading, stop),
                    timeout=max(0.0, due - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                now = loop.time()
                if stop.done() and stop.result() == "reset":
                    raise SessionDeleted(f"session {session_id!r} was deleted during the reply")
                if reading not in done and stop.done():
                    stopped = True
                    break
                if not done:
                    if unsent and now >= send_at:
                        await flush()
                    elif now >= end_by:
                        raise TimedOut(
                            f"streamed reply went on for more than {settings.stream_max_s:g} s"
                            " (BRIDGE_STREAM_MAX_S)"
                        )
                    elif now >= idle_until:
                        raise TimedOut(
                            f"streamed reply sent nothing for {idle_s:g} s ({idle_name})"
                        )
                    continue
                finished, reading = reading, None
                try:
                    chunk = finished.result()
                except StopAsyncIteration:
                    break
                idle_until = now + idle_s
                if stop.done():  # keep what came with the stop, read nothing more
                    stopped = True
                if not chunk:
                    if stopped:
                        break
                    continue
                size += len(chunk.encode("utf-8", "surrogatepass"))
                if size > limit:
                    raise PayloadTooLarge(f"streamed reply exceeds {limit} bytes")
                parts.append(chunk)
                unsent.append(chunk)
                if stopped:
                    break
                if now >= send_at:
                    await flush()
            if unsent:
                await flush()
        finally:
            if reading is not None:
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)
        return "".join(parts), stopped

    # -- Listen --------------------------------------------------------------------------

    async def listen(self, session_id: str | None, timeout: float | None) -> Listened | None:
        """The next user message for Listen (of one session or of any), waiting up to
        `timeout` seconds (capped by settings); None if none came.

        That is a message whose earlier claim went unanswered for `listen_lease_s` (no
        `ai` message in its session since), if any has attempts left, else the oldest
        user message no Listen call has had yet."""
        if self.settings.runs:
            raise Conflict(
                "this bridge answers user messages itself (it runs "
                f"{'a Langflow flow' if self.settings.langflow_url else 'an AG-UI agent'} for "
                "each one), so Listen hands out nothing: it would take messages from the runs"
            )
        if session_id is not None:
            check_session_id(session_id)
        wait = self.settings.listen_timeout_default_s if timeout is None else timeout
        if wait < 0:
            raise InvalidInput("timeout must be 0 or more seconds")
        wait = min(wait, self.settings.listen_timeout_max_s)
        self._metrics.listen_waiting.inc()
        try:
            claimed = await self._listen.wait(
                session_id,
                lambda: self._claim(session_id),
                self._storage.release_listen,
                wait,
            )
        finally:
            self._metrics.listen_waiting.dec()
        if claimed is None:
            return None
        message = claimed.message
        try:
            history = await self._storage.history(
                message.session_id, before=message.seq, last=self.settings.listen_history_limit
            )
        except BaseException:
            # Claimed but not handed out (the store failed, or the caller hung up):
            # give it back so that the next Listen call gets it.
            await asyncio.shield(self._release(claimed))
            raise
        return Listened(message, history, claimed.attempt)

    async def _claim(self, session_id: str | None, *, exclusive: bool = False) -> Claimed | None:
        """One claim in the store; report the leases it gave up, and arrange for a
        waiting Listen call to be woken when the new lease runs out."""
        outcome = await self._storage.claim_listen(session_id, exclusive=exclusive)
        for lost in outcome.dropped:
            log.warning(
                "Listen message seq %d of session %r is given up unanswered after %d "
                "attempt(s) (BRIDGE_LISTEN_ATTEMPTS_MAX=%d, BRIDGE_LISTEN_LEASE_S=%g)",
                lost.seq,
                lost.session_id,
                lost.attempts,
                self.settings.listen_attempts_max,
                self.settings.listen_lease_s,
            )
        claimed = outcome.claimed
        lease = self.settings.listen_lease_s
        if claimed is not None and lease > 0:
            # If nobody answers, the message may be claimed again once the lease runs
            # out; a call already waiting must hear of it then, as no new message will
            # wake it. An answer before that makes this wake-up find nothing (harmless).
            due = time.time() + lease  # not before the store's deadline: read after it
            asyncio.get_running_loop().call_later(
                lease, self._lease_ran_out, claimed.session_id, due
            )
        return claimed

    def _lease_ran_out(self, session_id: str, due: float) -> None:
        # The timer runs on the loop's monotonic clock, leases on the wall clock: if the
        # two drifted apart (NTP slewing), wait out the rest rather than wake a call
        # whose claim would not find the lease expired yet.
        left = due - time.time()
        if left > 0:
            asyncio.get_running_loop().call_later(left, self._lease_ran_out, session_id, due)
            return
        self._listen.notify(session_id)

    async def release(self, listened: Listened) -> None:
        """Give back a message a Listen call claimed but could not deliver."""
        await asyncio.shield(self._release(Claimed(listened.message, listened.attempt)))

    async def _release(self, claimed: Claimed) -> None:
        await self._storage.release_listen(claimed)
        self._listen.notify(claimed.session_id)  # a call waiting here may take it now

    # -- runs (bridge.runs drives these) ---------------------------------------------------

    async def next_run(self, timeout: float) -> Claimed | None:
        """The next user message to answer with a run, waiting up to `timeout` seconds.

        Claimed exclusively: a session whose previous message is still leased (its run
        goes on, here or on another instance) is skipped, so each session's messages run
        one at a time and in order. A message whose run died with its process (lease run
        out) comes first. The claim is a Listen lease: `renew_run` keeps it, `end_run`
        settles it without a reply, an `ai` message in the session settles it too."""
        return await self._listen.wait(
            None,
            lambda: self._claim(None, exclusive=True),
            self._storage.release_listen,
            timeout,
        )

    async def run_history(self, message: StoredMessage) -> list[StoredMessage]:
        """The session's messages before `message` (at most `listen_history_limit`)."""
        return await self._storage.history(
            message.session_id, before=message.seq, last=self.settings.listen_history_limit
        )

    async def renew_run(self, claimed: Claimed) -> bool:
        """Extend the lease of a message being run; False if it is no longer held (the
        session was deleted, or answered by another message)."""
        return await self._storage.renew_listen(claimed)

    async def end_run(self, claimed: Claimed) -> None:
        """The run of `claimed` ended without storing a reply (an error, shown to the
        tabs): the message counts as answered and is not run again."""
        await asyncio.shield(self._storage.ack_listen(claimed))

    async def give_back_run(self, claimed: Claimed) -> None:
        """The run of `claimed` was interrupted (the bridge is stopping): its message is
        run again first, by this bridge when it is back or by another instance."""
        await asyncio.shield(self._release(claimed))

    async def publish_run(self, session_id: str, kind: str, /, **data: object) -> None:
        """Tell the session's tabs how a run goes (`run.start`, `run.step`, `run.end`)."""
        await self._broker.publish(Event.of(session_id, kind, **data))

    # -- template ------------------------------------------------------------------------

    async def set_template(self, template: Template) -> Template:
        """Store the template and push it to every subscriber; nothing restarts."""
        await self._storage.save_template(template)
        self._template = template
        await self._broker.publish(
            Event.of(ALL_SESSIONS, "template", template=template.model_dump())
        )
        return template

    # -- subscriptions -------------------------------------------------------------------

    def subscribe(
        self,
        session_id: str,
        after: int,
        send: Send,
        close: Closer,
        *,
        expires_at: float | None = None,
    ) -> Subscription:
        """`async with service.subscribe(...) as sub:` one socket's subscription to
        `session_id`, created with its welcome if new.

        On entry the socket is sent `hello` and every stored message after `after`, then
        goes live: the `Subscriber` it yields gets every later event of the session once,
        in `seq` order, and takes the socket's own frames (`sub.put`). `send` and `close`
        are the socket's ASGI send and close; `expires_at` (wall-clock seconds), when the
        socket's session token runs out: it is closed with 1008 then. A subscriber closed
        meanwhile (too slow, token expired, session deleted) is yielded all the same:
        its close frame is on the way, and the transport sees the disconnect. Leaving
        is certain, whatever happens inside. Raises `BridgeError` before anything is
        sent if the session cannot be opened."""
        check_session_id(session_id)
        if after < 0:
            raise InvalidInput("after must be 0 or more")
        return Subscription(self, session_id, after, send, close, expires_at)

    async def _join(self, subscription: Subscription) -> Subscriber:
        """`Subscription.__aenter__`: join the hub, then hello and replay, then live.

        The subscriber joins the hub (its outbox held) before storage is read, so a
        message stored meanwhile is either read by the replay or held for `go_live`;
        `seq` drops the overlap."""
        session_id = subscription.session_id
        opened = await self.ensure_session(session_id)
        sub = subscription.sub = self._hub.join(session_id, subscription.send, subscription.close)
        if subscription.expires_at is not None:
            # The token let this socket in until its `exp`; no longer.
            loop = asyncio.get_running_loop()
            subscription.expiry = loop.call_at(
                loop.time() + subscription.expires_at - time.time(),
                self._hub.kick,
                sub,
                CLOSE_POLICY,
                TOKEN_EXPIRED,
            )
        subscribers = await self._presence_changed(session_id, +1)
        subscription.counted = True
        await self._replay(sub, subscription.after, opened.last_seq, subscribers)
        return sub

    async def _replay(self, sub: Subscriber, after: int, last_seq: int, subscribers: int) -> None:
        """Send hello and every stored message after `after`, then go live.

        History is read in pages of about `replay_buffer_bytes` (`history_pages`): a
        socket holds one page at a time, however large the messages. A subscriber kicked
        meanwhile stops here; its close frame is on the way."""
        info = await self._storage.session_info(sub.session_id)
        bound = info.last_seq if info is not None else last_seq
        epoch = self.epoch(info) if info is not None else ""
        outbox = sub.outbox
        try:
            await outbox.send(
                Event.of(
                    sub.session_id,
                    "hello",
                    session_id=sub.session_id,
                    epoch=epoch,
                    last_seq=bound,
                    template=self._template.model_dump(),
                    subscribers=subscribers,
                )
            )
            replayed: set[str] = set()
            if info is not None and after < bound:
                pages = history_pages(
                    self._storage,
                    info,
                    after=after,
                    budget_bytes=self.settings.replay_buffer_bytes,
                )
                del info
                async for page in pages:
                    for message in page:
                        await outbox.send(Event.message(message))
                        sub.last_seq = message.seq
                        replayed.add(message.id)
                    del page  # hold one page at a time, not this one while reading the next
        except OutboxClosed:
            return
        self._hub.go_live(sub, replayed)

    async def _leave(self, subscription: Subscription) -> None:
        """`Subscription.__aexit__` (and a failed `__aenter__`): undo what `_join` did."""
        if subscription.expiry is not None:
            subscription.expiry.cancel()
        sub = subscription.sub
        try:
            if subscription.counted:
                subscription.counted = False
                await self._presence_changed(subscription.session_id, -1)
        finally:
            if sub is not None:
                await self._hub.leave(sub)

    async def _presence_changed(self, session_id: str, delta: int) -> int:
        """Count a subscriber in or out; the session hears of it within
        `presence_interval_s`, in one `presence` event however many joined or left.

        One event per join would cost N frames per join: N² to open N tabs of a session.
        """
        count = await self._broker.presence(session_id, delta)
        if session_id not in self._presence_due:
            self._presence_due.add(session_id)
            asyncio.get_running_loop().call_later(
                self.settings.presence_interval_s, self._announce_presence, session_id
            )
        return count

    def _announce_presence(self, session_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._publish_presence(session_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _publish_presence(self, session_id: str) -> None:
        self._presence_due.discard(session_id)
        try:
            count = await self._broker.presence(session_id, 0)
            await self._broker.publish(Event.of(session_id, "presence", subscribers=count))
        except BridgeError as exc:  # presence is advisory; a store hiccup must not surface
            log.warning("presence of %s not announced: %s", session_id, exc.detail)


class Subscription:
    """The async context manager of `BridgeService.subscribe`.

    A class with slots rather than a generator: one lives as long as each socket, and an
    idle socket should cost as little as possible."""

    __slots__ = (
        "_service",
        "after",
        "close",
        "counted",
        "expires_at",
        "expiry",
        "send",
        "session_id",
        "sub",
    )

    def __init__(
        self,
        service: BridgeService,
        session_id: str,
        after: int,
        send: Send,
        close: Closer,
        expires_at: float | None,
    ) -> None:
        self._service = service
        self.session_id = session_id
        self.after = after
        self.send = send
        self.close = close
        self.expires_at = expires_at
        self.sub: Subscriber | None = None
        self.expiry: asyncio.TimerHandle | None = None
        self.counted = False  # in the presence count

    async def __aenter__(self) -> Subscriber:
        try:
            return await self._service._join(self)
        except BaseException:
            await self._service._leave(self)
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        await self._service._leave(self)
