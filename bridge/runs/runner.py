"""The runner: each user message of each session answered by one run of the flow/agent.

`runs_max` workers take user messages from the store (`BridgeService.next_run`: an
exclusive Listen claim, so a session's messages run one at a time, in order, on whichever
instance claims them) and run each:

    run.start -> stream.start -> run.step / stream.delta ... -> stream.end -> run.end

The reply is stored once, keyed by the user message (`reply-to:<seq>`), which also
settles the claim. A run that fails stores nothing, tells the tabs why (`run.end` with
outcome `error`) and settles the claim, so the next message runs normally. A run cut by
the bridge stopping gives its message back, to be run again first. While a run lasts, its
lease is renewed, so that only a run whose process died is run again (once the lease ran
out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

import httpx

from bridge.errors import BridgeError, TimedOut
from bridge.metrics import Metrics
from bridge.models import StoredMessage
from bridge.runs.agui import Progress, RunFailed, Step
from bridge.runs.sources import RunSource, error_text
from bridge.runs.sse import EventTooLarge, sse_data
from bridge.service import BridgeService
from bridge.settings import Settings
from bridge.storage import Claimed

__all__ = ["Runner"]

log = logging.getLogger("bridge.runs")

_ERROR_BODY_MAX = 4096  # of an HTTP error answer, read for its message
_DRAIN_S = 1.0  # what a finished run's body may take to end before its connection is dropped
_IDLE_WAIT_S = 3600.0  # a worker's wait for work when leases are off


class Runner:
    """Runs `source` for every user message of every session of `service`."""

    def __init__(
        self,
        service: BridgeService,
        source: RunSource,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self._service = service
        self._metrics = metrics
        self._source = source
        self._settings = settings
        self._client: httpx.AsyncClient | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        """Open the HTTP client and start `runs_max` workers."""
        settings = self._settings
        self._client = httpx.AsyncClient(
            # The read timeout is a silence bound too: the runner's own (run_timeout_s)
            # ends the run first, with a plain-words error.
            timeout=httpx.Timeout(10.0, read=settings.run_timeout_s + 5, write=30.0),
            limits=httpx.Limits(
                max_connections=settings.runs_max, max_keepalive_connections=settings.runs_max
            ),
            trust_env=False,
        )
        self._workers = [
            asyncio.create_task(self._work(), name=f"bridge-run-{n}")
            for n in range(settings.runs_max)
        ]
        log.info(
            "answering user messages with %s (%d runs at once)",
            self._source.where,
            settings.runs_max,
        )

    async def stop(self) -> None:
        """Stop the workers: a run under way is cut, its partial reply aborted, and its
        message given back (run again first when a bridge is back)."""
        self._stopping = True
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _work(self) -> None:
        service = self._service
        # New messages wake a worker at once; a lease that runs out does so only on the
        # instance that granted it, and that one may have died (kill -9, a crash). So a
        # worker also looks again every half lease: a dead run's message is run again
        # within 1.5 leases of the claim, by whichever instance looks first.
        lease = self._settings.listen_lease_s
        idle = max(1.0, lease / 2) if lease > 0 else _IDLE_WAIT_S
        while not self._stopping:
            try:
                claimed = await service.next_run(idle)
            except BridgeError as exc:  # the store failed: try again shortly
                log.warning("runs: cannot take the next message: %s", exc.detail)
                await asyncio.sleep(1.0)  # back off before asking the store again
                continue
            if claimed is None:
                if service.closing:
                    return
                continue
            await self._run(claimed)

    async def _run(self, claimed: Claimed) -> None:
        service = self._service
        message = claimed.message
        session_id = message.session_id
        run_id = uuid.uuid4().hex
        outcome, reason = "done", ""
        renewing = asyncio.create_task(self._renew(claimed))
        self._metrics.runs_active.inc()
        try:
            await service.publish_run(session_id, "run.start", run_id=run_id, reply_to=message.seq)
            history = await service.run_history(message) if self._source.needs_history else []
            stored = await service.stream(
                session_id,
                "ai",
                self._reply(claimed, history, run_id),
                f"reply-to:{message.seq}",
                run_id=run_id,
                idle_timeout=(self._settings.run_timeout_s, "BRIDGE_RUN_TIMEOUT_S"),
            )
            if stored.stopped:
                outcome = "stopped"
        except asyncio.CancelledError:
            # The bridge is stopping: the message is run again when a bridge is back.
            outcome = "given_back"
            await asyncio.shield(self._give_back(claimed, session_id, run_id))
            raise
        except RunFailed as exc:
            outcome, reason = "error", exc.detail
        except TimedOut:
            outcome, reason = (
                "error",
                (
                    f"The assistant did not answer: {self._source.where} sent nothing for "
                    f"{self._settings.run_timeout_s:g} s (BRIDGE_RUN_TIMEOUT_S)"
                ),
            )
        except BridgeError as exc:  # too large, the store failed, ...
            outcome, reason = "error", f"The reply could not be stored: {exc.detail}"
        except Exception:
            log.exception("run %s of session %r failed", run_id, session_id)
            outcome, reason = "error", "The bridge failed while running the assistant."
        finally:
            renewing.cancel()
            self._metrics.runs_active.dec()
            self._metrics.runs.labels(outcome).inc()
        if outcome == "error":
            log.info("run %s of session %r: %s", run_id, session_id, reason)
            try:
                await service.end_run(claimed)
            except BridgeError as exc:
                log.warning(
                    "run %s: could not settle message seq %d: %s", run_id, message.seq, exc.detail
                )
        await self._end(session_id, run_id, outcome, reason)

    async def _end(self, session_id: str, run_id: str, outcome: str, reason: str) -> None:
        try:
            await self._service.publish_run(
                session_id, "run.end", run_id=run_id, outcome=outcome, reason=reason
            )
        except BridgeError as exc:
            log.warning("run %s: run.end not published: %s", run_id, exc.detail)

    async def _give_back(self, claimed: Claimed, session_id: str, run_id: str) -> None:
        with contextlib.suppress(BridgeError):
            await self._service.give_back_run(claimed)
        await self._end(
            session_id, run_id, "error", "The bridge is restarting; the reply will follow."
        )

    async def _renew(self, claimed: Claimed) -> None:
        """Keep the claim's lease while the run lasts (a third of the lease each time)."""
        lease = self._settings.listen_lease_s
        if lease <= 0:
            return
        while True:
            await asyncio.sleep(lease / 3)  # a timer, not synchronisation
            try:
                if not await self._service.renew_run(claimed):
                    return  # answered meanwhile, or the session was deleted
            except BridgeError as exc:
                log.warning("run lease of seq %d not renewed: %s", claimed.message.seq, exc.detail)

    async def _reply(
        self, claimed: Claimed, history: list[StoredMessage], run_id: str
    ) -> AsyncIterator[str]:
        """The reply's text as the run streams it; steps go to the tabs on the way.
        Raises `RunFailed` in plain words for every way a run can fail."""
        source = self._source
        client = self._client
        assert client is not None, "Runner.start() opens the client"
        request = source.request(claimed.message, history, run_id)
        progress = Progress(source.who)
        session_id = claimed.message.session_id
        text_seen = False
        try:
            async with client.stream(
                "POST", request.url, json=request.json, headers=request.headers
            ) as response:
                if response.status_code != 200:
                    body = await _read_some(response, _ERROR_BODY_MAX)
                    detail = error_text(body) or response.reason_phrase
                    raise RunFailed(
                        f"The assistant is unavailable: {source.where} answered "
                        f"{response.status_code}: {detail}"
                    )
                kind = response.headers.get("content-type", "").split(";")[0].strip()
                if kind != "text/event-stream":
                    raise RunFailed(
                        f"The assistant is unavailable: {source.where} answered with "
                        f"{kind or 'no content type'}, not an event stream"
                    )
                limit = 6 * self._settings.max_message_bytes + 4096
                events = sse_data(response.aiter_raw(), limit)
                async for data in events:
                    got = progress.feed(data)
                    if isinstance(got, Step):
                        await self._service.publish_run(
                            session_id, "run.step", run_id=run_id, label=got.label
                        )
                    elif got:
                        text_seen = True
                        yield got
                    if progress.finished:
                        break
                if progress.finished:
                    # Read the body to its end (it ends right after RUN_FINISHED), so that
                    # the connection is kept for the next run rather than closed.
                    with contextlib.suppress(TimeoutError, httpx.HTTPError, EventTooLarge):
                        async with asyncio.timeout(_DRAIN_S):
                            async for _ in events:
                                pass
        except httpx.ConnectError:
            raise RunFailed(f"The assistant is unavailable: cannot reach {source.where}") from None
        except httpx.TimeoutException:
            raise RunFailed(
                f"The assistant is unavailable: {source.where} did not answer in time"
            ) from None
        except httpx.HTTPError as exc:
            raise RunFailed(
                f"The assistant is unavailable: the connection to {source.where} failed "
                f"({type(exc).__name__})"
            ) from None
        except EventTooLarge as exc:
            raise RunFailed(f"{source.who.capitalize()} sent {exc}") from None
        if not progress.finished:
            raise RunFailed(
                f"{source.who.capitalize()} stopped before the end of its run "
                f"({source.where} closed the stream)"
            )
        if not text_seen:
            raise RunFailed(f"{source.who.capitalize()} finished without a reply")


async def _read_some(response: httpx.Response, limit: int) -> bytes:
    body = b""
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) >= limit:
            break
    return body[:limit]
