"""Outbox: inline sends while the socket keeps up, a bounded backlog when it does not."""

from __future__ import annotations

import asyncio

import pytest

from bridge.events import text_message as m
from bridge.outbox import Message, Outbox, OutboxClosed


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


async def _drained(outbox: Outbox, sock: Socket, count: int) -> None:
    async with asyncio.timeout(5):
        while len(sock.sent) < count:
            await asyncio.sleep(0)  # poll: let the drain task run


async def test_sends_inline_without_a_task_while_writable() -> None:
    sock = Socket()
    outbox = Outbox(sock.send, max_frames=4, max_bytes=1000)
    tasks_before = len(asyncio.all_tasks())
    for i in range(100):
        assert outbox.put(m(f"f{i}"))
    # Every frame was written synchronously inside put(): no task was needed.
    assert sock.sent == [f"f{i}" for i in range(100)]
    assert len(asyncio.all_tasks()) == tasks_before


async def test_blocked_send_is_finished_in_order_by_one_drain_task() -> None:
    sock = Socket()
    outbox = Outbox(sock.send, max_frames=10, max_bytes=1000)
    sock.writable.clear()
    for frame in ("a", "b", "c"):
        assert outbox.put(m(frame))
    assert sock.sent == [] and outbox.backlog == 2
    sock.writable.set()
    await _drained(outbox, sock, 3)
    assert sock.sent == ["a", "b", "c"] and not outbox.closed
    assert outbox.put(m("d")) and sock.sent[-1] == "d"  # back to inline sends


async def test_backlog_overflow_by_frames_and_by_bytes() -> None:
    for max_frames, max_bytes, frame in ((3, 10_000, "x"), (100, 25, "x" * 10)):
        sock = Socket()
        outbox = Outbox(sock.send, max_frames=max_frames, max_bytes=max_bytes)
        sock.writable.clear()
        results = [outbox.put(m(frame)) for _ in range(10)]
        assert False in results
        assert outbox.overflowed and outbox.closed and outbox.backlog == 0
        assert not outbox.put(m(frame))
        await outbox.aclose()


async def test_failed_socket_marks_outbox_closed() -> None:
    sock = Socket()
    sock.fail = True
    outbox = Outbox(sock.send, max_frames=3, max_bytes=100)
    assert not outbox.put(m("x"))
    assert outbox.closed and not outbox.overflowed


async def test_failure_after_suspension_closes_and_aclose_cancels() -> None:
    sock = Socket()
    outbox = Outbox(sock.send, max_frames=3, max_bytes=100)
    sock.writable.clear()
    assert outbox.put(m("x"))
    sock.fail = True
    sock.writable.set()
    async with asyncio.timeout(5):
        while not outbox.closed:
            await asyncio.sleep(0)  # poll: let the drain task hit the failure
    sock2 = Socket()
    stuck = Outbox(sock2.send, max_frames=3, max_bytes=100)
    sock2.writable.clear()
    assert stuck.put(m("y"))
    await stuck.aclose()  # cancels the drain task waiting on the blocked send
    assert stuck.closed and sock2.sent == []


async def test_send_waits_for_backlog_then_writes() -> None:
    sock = Socket()
    outbox = Outbox(sock.send, max_frames=3, max_bytes=100)
    sock.writable.clear()
    outbox.put(m("queued"))
    started = asyncio.Event()

    async def direct() -> None:
        started.set()  # no suspension point until outbox.send suspends
        await outbox.send(m("direct"))

    waiter = asyncio.create_task(direct())
    await asyncio.wait_for(started.wait(), 5)
    assert sock.sent == []  # it must not overtake the queued frame
    sock.writable.set()
    await asyncio.wait_for(waiter, 5)
    assert sock.sent == ["queued", "direct"]


async def test_send_refuses_once_closed() -> None:
    """After a kick the close frame may be out already: nothing may be written after it
    (the server would raise, and the replay would crash instead of stopping)."""
    sock = Socket()
    outbox = Outbox(sock.send, max_frames=3, max_bytes=100)
    await outbox.send(m("before"))
    outbox.closed = True
    with pytest.raises(OutboxClosed):
        await outbox.send(m("after"))
    assert sock.sent == ["before"]
