"""bridge.outbox: held until released, then inline sends while the socket keeps up, one
bounded queue when it does not."""

from __future__ import annotations

import asyncio

import pytest

from bridge.events import Event
from bridge.outbox import Message, Outbox, OutboxClosed


def m(text: str) -> Event:
    """An event whose frame is `text` (an outbox writes frames, it does not read them)."""
    return Event("s", "test", {}, frame=text)


class Socket:
    """A fake socket *transport* (not a project module): writable until told otherwise."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()
        self.sent: list[str] = []
        self.fail = False

    async def send(self, message: Message) -> None:
        await self.writable.wait()
        if self.fail:
            raise ConnectionResetError("gone")
        self.sent.append(message["text"])


def live(sock: Socket, max_frames: int = 4, max_bytes: int = 1000) -> Outbox:
    """An outbox already released (its subscriber's replay is over)."""
    outbox = Outbox(sock.send, max_frames=max_frames, max_bytes=max_bytes)
    assert list(outbox.release()) == []
    return outbox


async def _sent(sock: Socket, count: int) -> None:
    async with asyncio.timeout(5):
        while len(sock.sent) < count:
            await asyncio.sleep(0)  # poll: let the writer task run


async def test_sends_inline_without_a_task_while_writable() -> None:
    sock = Socket()
    outbox = live(sock)
    tasks_before = len(asyncio.all_tasks())
    for i in range(100):
        assert outbox.put(m(f"f{i}"))
    # Every frame was written synchronously inside put(): no task was needed.
    assert sock.sent == [f"f{i}" for i in range(100)]
    assert len(asyncio.all_tasks()) == tasks_before


async def test_held_until_released_while_send_writes_ahead() -> None:
    """During the replay `send` writes (waiting for the socket) and `put` holds; release
    hands the held events back in order and the outbox writes inline from then on."""
    sock = Socket()
    outbox = Outbox(sock.send, max_frames=10, max_bytes=1000)
    assert outbox.held
    assert outbox.put(m("live-1")) and outbox.put(m("live-2"))
    await outbox.send(m("hello"))
    await outbox.send(m("replayed"))
    assert sock.sent == ["hello", "replayed"] and outbox.queued == 2
    held = [e.frame for e in outbox.release()]
    assert held == ["live-1", "live-2"] and not outbox.held and outbox.queued == 0
    assert outbox.put(m("live-3")) and sock.sent[-1] == "live-3"
    with pytest.raises(RuntimeError):
        await outbox.send(m("late"))  # after release, frames go through put, in order


async def test_blocked_send_is_finished_in_order_by_one_writer_task() -> None:
    sock = Socket()
    outbox = live(sock, max_frames=10)
    sock.writable.clear()
    for frame in ("a", "b", "c"):
        assert outbox.put(m(frame))
    assert sock.sent == [] and outbox.queued == 2
    sock.writable.set()
    await _sent(sock, 3)
    assert sock.sent == ["a", "b", "c"] and not outbox.closed
    async with asyncio.timeout(5):
        while outbox.queued or len(asyncio.all_tasks()) > 1:
            await asyncio.sleep(0)  # poll: the writer task ends once the queue is empty
    assert outbox.put(m("d")) and sock.sent[-1] == "d"  # back to inline sends


async def test_a_send_that_yields_bare_and_suspends_twice_is_carried_on() -> None:
    """The writer carries on the very coroutine whose first step ran inline, whatever it
    awaits next: a bare yield (`sleep(0)`), then a future, then the end."""
    steps: list[str] = []
    gate = asyncio.Event()

    async def send(message: Message) -> None:
        steps.append("start " + message["text"])
        await asyncio.sleep(0)  # wait-ok: the send under test yields bare, as some do
        steps.append("after yield")
        await gate.wait()
        steps.append("written " + message["text"])

    outbox = Outbox(send, max_frames=3, max_bytes=100)
    outbox.release()
    assert outbox.put(m("x")) and outbox.put(m("y"))
    assert steps == ["start x"]
    gate.set()
    async with asyncio.timeout(5):
        while "written y" not in steps:
            await asyncio.sleep(0)  # poll: let the writer task run
    assert steps == ["start x", "after yield", "written x", "start y", "after yield", "written y"]


async def test_queue_overflow_by_frames_and_by_bytes() -> None:
    for max_frames, max_bytes, frame in ((3, 10_000, "x"), (100, 25, "x" * 10)):
        sock = Socket()
        outbox = live(sock, max_frames=max_frames, max_bytes=max_bytes)
        sock.writable.clear()
        results = [outbox.put(m(frame)) for _ in range(10)]
        assert False in results
        assert outbox.overflowed and outbox.closed and outbox.queued == 0
        assert not outbox.put(m(frame))
        await outbox.aclose()


async def test_held_queue_has_the_same_bounds() -> None:
    outbox = Outbox(Socket().send, max_frames=2, max_bytes=1000)
    assert outbox.fits(m("a")) and outbox.put(m("a")) and outbox.put(m("b"))
    assert not outbox.fits(m("c"))
    assert not outbox.put(m("c"))
    assert outbox.overflowed and outbox.closed and list(outbox.release()) == []


async def test_failed_socket_marks_outbox_closed() -> None:
    sock = Socket()
    sock.fail = True
    outbox = live(sock, max_frames=3, max_bytes=100)
    assert not outbox.put(m("x"))
    assert outbox.closed and not outbox.overflowed


async def test_failure_after_suspension_closes_and_aclose_cancels() -> None:
    sock = Socket()
    outbox = live(sock, max_frames=3, max_bytes=100)
    sock.writable.clear()
    assert outbox.put(m("x"))
    sock.fail = True
    sock.writable.set()
    async with asyncio.timeout(5):
        while not outbox.closed:
            await asyncio.sleep(0)  # poll: let the writer task hit the failure
    sock2 = Socket()
    stuck = live(sock2, max_frames=3, max_bytes=100)
    sock2.writable.clear()
    assert stuck.put(m("y"))
    await stuck.aclose()  # cancels the writer task waiting on the blocked send
    assert stuck.closed and sock2.sent == []


async def test_closing_ends_a_waiting_write_inside_the_send() -> None:
    """A write waiting for the socket when the outbox is closed is cancelled inside the
    send itself, as a task's cancellation would be, so that the server's own cleanup runs
    (its `finally`); also when the writer task had not begun yet."""
    seen: list[str] = []
    gate = asyncio.Event()

    async def send(message: Message) -> None:
        try:
            if message["text"] == "yield first":
                await asyncio.sleep(0)  # wait-ok: the send under test yields bare
                seen.append("waiting")
            await gate.wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        finally:
            seen.append("ended " + message["text"])

    early = Outbox(send, max_frames=3, max_bytes=100)
    early.release()
    assert early.put(m("x"))
    await early.aclose()  # before its writer task ever ran
    assert seen == ["ended x"]

    seen.clear()
    later = Outbox(send, max_frames=3, max_bytes=100)
    later.release()
    assert later.put(m("yield first"))
    async with asyncio.timeout(5):
        while "waiting" not in seen:
            await asyncio.sleep(0)  # poll: let the writer task carry the send on
    await later.aclose()
    assert seen == ["waiting", "cancelled", "ended yield first"]


async def test_send_refuses_once_closed() -> None:
    """After a kick the close frame may be out already: nothing may be written after it
    (the server would raise, and the replay would crash instead of stopping)."""
    sock = Socket()
    outbox = Outbox(sock.send, max_frames=3, max_bytes=100)
    await outbox.send(m("before"))
    outbox.stop()
    with pytest.raises(OutboxClosed):
        await outbox.send(m("after"))
    assert sock.sent == ["before"]


# Below the outbox: the server's `send`, which writes a text frame to an open socket in
# one step (bridge/server.py). Here rather than in a test module of its own because it is
# the other half of the outbox's inline write.


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_text_frame_is_what_websockets_writes(size: int) -> None:
    from websockets.frames import Frame, Opcode

    from bridge.server import text_frame

    for text in ("x" * size, ("é" * size)[: max(0, size // 2)]):
        expected = Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])
        assert text_frame(text) == expected


class _Transport(asyncio.Transport):
    """Takes every write; `pause_writing`/`resume_writing` are driven by the test."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


async def test_server_send_writes_frames_in_order_and_waits_while_paused() -> None:
    """The shortcut writes the same bytes as uvicorn's path, in order with frames that take
    uvicorn's path (binary, close), and waits like it while the transport is paused."""
    import uvicorn
    from uvicorn.server import ServerState
    from websockets.frames import Frame, Opcode

    from bridge.server import _protocol_class, text_frame

    texts = ["hello", "é" * 200, "x" * 70_000]
    go = asyncio.Event()
    accepted = asyncio.Event()
    sending = asyncio.Event()
    sent = asyncio.Event()

    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        assert callable(send)
        await send({"type": "websocket.accept"})
        accepted.set()
        await go.wait()
        # The test runs again only once this task waits: inside the next send, at the gate.
        sending.set()
        await send({"type": "websocket.send", "text": texts[0]})
        await send({"type": "websocket.send", "bytes": b"\x00\x01"})
        for text in texts[1:]:
            await send({"type": "websocket.send", "text": text})
        sent.set()
        await send({"type": "websocket.close", "code": 1000})

    config = uvicorn.Config(app, ws_per_message_deflate=False, log_level="warning")
    config.load()
    protocol = _protocol_class(10.0)(config=config, server_state=ServerState(), app_state={})
    transport = _Transport()
    protocol.connection_made(transport)
    protocol.data_received(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    async with asyncio.timeout(5):
        await accepted.wait()
    assert b"\r\n\r\n" in transport.data  # the handshake answer
    handshake = len(transport.data)
    protocol.pause_writing()
    go.set()
    async with asyncio.timeout(5):
        await sending.wait()
    assert len(transport.data) == handshake and not sent.is_set()
    protocol.resume_writing()
    async with asyncio.timeout(5):
        await sent.wait()
    binary = Frame(Opcode.BINARY, b"\x00\x01").serialize(mask=False, extensions=[])
    expected = text_frame(texts[0]) + binary + b"".join(text_frame(t) for t in texts[1:])
    assert bytes(transport.data[handshake : handshake + len(expected)]) == expected
    protocol.connection_lost(None)
