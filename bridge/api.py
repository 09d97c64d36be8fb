"""HTTP routes: the documented Streamlit API and the bridge's additions. Routes only:
parse, call the service, answer. Errors are `BridgeError`s, mapped in `app.py`.

`routes(service, auth, limiter)` builds them once per app; each endpoint is a closure over
what it needs, so that no request looks anything up in `app.state`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Query, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from bridge.auth import Auth
from bridge.chunks import decode_chunks, ndjson_line_limit
from bridge.errors import InvalidInput, PayloadTooLarge
from bridge.models import (
    MessageIn,
    StoredMessage,
    Template,
    check_session_id,
    describe_validation_error,
)
from bridge.ratelimit import RateLimiter
from bridge.responses import json_response, json_text_response, no_content
from bridge.schemas import ERRORS, ListenAnswer, MessageOut, SessionOut, StopOut, TokenOut
from bridge.service import BridgeService

__all__ = ["routes"]

NO_MESSAGE: dict[int | str, dict[str, Any]] = {
    204: {"description": "no user message came within the timeout"}
}

M = TypeVar("M", bound=BaseModel)

SessionPath = Annotated[str, "session id: [A-Za-z0-9_.:-]{1,128}"]


async def _read_limited(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it is known to exceed `limit`: a huge body is
    never buffered whole (its declared length, or the running count, gives it away)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def _body(request: Request, model: type[M], limit: int) -> M:
    body = await _read_limited(request, limit)
    if not body:
        raise InvalidInput(f"request body is empty: send a JSON object ({model.__name__})")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidInput(describe_validation_error(exc)) from None


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    """Declare a JSON body in the OpenAPI schema for routes that parse it themselves."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


_POST_PARAMETERS = [
    {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}},
    {
        "name": "idempotency-key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "maxLength": 128},
    },
]


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _json_array(pages: AsyncIterator[list[StoredMessage]]) -> AsyncIterator[str]:
    """A JSON array written a page at a time: memory per reader is one page, and the
    server's flow control holds the next page back while a reader is slow."""
    yield "["
    comma = ""
    async for page in pages:
        for message in page:  # one message per write: no second copy of the page
            yield comma + message.to_json()
            comma = ","
    yield "]"


async def _disconnected(request: Request) -> None:
    """Return when the client closes its connection (a GET has no body to read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def routes(service: BridgeService, auth: Auth, limiter: RateLimiter) -> list[BaseRoute]:
    """Every HTTP route of the API, the hot one first (see `post_message`)."""
    router = APIRouter(prefix="/api/v1", responses=ERRORS)
    settings = service.settings
    # JSON escaping can at most multiply text by 6 (\uXXXX); 4 KiB covers the other fields.
    body_limit = settings.max_message_bytes * 6 + 4096
    line_limit = ndjson_line_limit(settings.max_message_bytes)

    def rate_limited(request: Request) -> None:
        # Called in the route, not as a FastAPI dependency: resolving one costs more than
        # the check itself on the publish path, which is the hot one.
        if limiter.enabled:
            limiter.take(_client(request))

    # The hot route reads its parameters itself (FastAPI's per-parameter validation cost
    # more than the rest of the request) and is served by a plain Starlette `Route` placed
    # before every FastAPI route (`fast` below): FastAPI's request handling around the
    # endpoint costs about as much again. The FastAPI registration only describes it in
    # OpenAPI.
    @router.post(
        "/sessions/{session_id}/messages",
        summary="Publish a message (creates the session if new)",
        openapi_extra={**_schema(MessageIn), "parameters": _POST_PARAMETERS},
        response_model=MessageOut,
    )
    async def post_message(request: Request) -> Response:
        rate_limited(request)
        message = await _body(request, MessageIn, body_limit)
        stored = await service.post(
            request.path_params["session_id"], message, request.headers.get("idempotency-key")
        )
        return json_text_response(stored.to_json())

    fast = [Route("/api/v1/sessions/{session_id}/messages", post_message, methods=["POST"])]

    @router.post(
        "/sessions/{session_id}",
        summary="Create a session (seeded with the welcome)",
        response_model=list[MessageOut],
    )
    async def create_session(session_id: SessionPath, request: Request) -> Response:
        rate_limited(request)  # each new session costs storage: creating them is publishing
        messages = await service.create_session(session_id)
        return json_response([m.to_dict() for m in messages])

    @router.get(
        "/sessions",
        summary="Session ids in creation order, a page at a time (Link: rel=next when more)",
        response_model=list[str],
    )
    async def list_sessions(
        request: Request,
        offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
        limit: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    ) -> Response:
        ids = await service.sessions(offset, limit)
        page = limit or settings.list_limit_max
        headers = None
        if len(ids) == page:
            following = f"{request.url.path}?offset={offset + page}&limit={page}"
            headers = {"Link": f'<{following}>; rel="next"'}
        return json_response(ids, headers=headers)

    @router.get(
        "/sessions/last",
        summary="The most recently created session id (a JSON string)",
        response_model=str,
    )
    async def last_session() -> Response:
        return json_response(await service.last_session())

    @router.get(
        "/sessions/{session_id}",
        summary="Counters and subscribers of a session",
        response_model=SessionOut,
    )
    async def session_info(session_id: SessionPath) -> Response:
        view = await service.session(session_id)
        return json_response(view.to_dict())

    @router.delete(
        "/sessions/{session_id}",
        summary="Delete a session; subscribers get reset",
        response_model=dict[str, str],
    )
    async def delete_session(session_id: SessionPath) -> Response:
        await service.delete_session(session_id)
        return json_response({"deleted": session_id})

    @router.post(
        "/sessions/{session_id}/token",
        summary="Mint a WebSocket token for a session",
        response_model=TokenOut,
    )
    async def mint_token(session_id: SessionPath) -> Response:
        return json_response(auth.mint(check_session_id(session_id)).to_dict())

    @router.get(
        "/sessions/{session_id}/messages",
        summary="The last `limit` messages (0: all)",
        response_model=list[MessageOut],
    )
    async def session_messages(
        session_id: SessionPath, limit: Annotated[int, Query(ge=0, le=2**62)] = 0
    ) -> Response:
        pages = await service.history(session_id, limit)
        return StreamingResponse(_json_array(pages), media_type="application/json")

    @router.get(
        "/sessions/{session_id}/messages/last",
        summary="The newest message (of a role)",
        response_model=MessageOut,
    )
    async def last_message(
        session_id: SessionPath, role: Annotated[str, Query(max_length=16)] = "any"
    ) -> Response:
        message = await service.last_message(session_id, role)
        return json_text_response(message.to_json())

    @router.post(
        "/sessions/{session_id}/messages/stream",
        summary="Publish a streamed reply from a chunked body (text or NDJSON {delta})",
        response_model=MessageOut,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "text/plain": {"schema": {"type": "string"}},
                    "application/x-ndjson": {"schema": {"type": "string"}},
                },
            }
        },
    )
    async def stream_message(
        session_id: SessionPath,
        request: Request,
        role: Annotated[str, Query(max_length=16)] = "ai",
        idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
    ) -> Response:
        rate_limited(request)
        content_type = request.headers.get("content-type", "")
        ndjson = content_type.split(";")[0].strip() in ("application/x-ndjson", "application/jsonl")
        chunks = decode_chunks(request.stream(), ndjson=ndjson, max_line=line_limit)
        stored = await service.stream(session_id, role, chunks, idempotency_key)
        # A stopped reply is answered while the producer may still be sending: closing
        # the connection after the answer makes its next write fail, so it stops too
        # (an HTTP client that sends the whole body before reading would never look).
        headers = {"connection": "close"} if stored.stopped else None
        return json_text_response(stored.to_json(), headers=headers)

    @router.post(
        "/sessions/{session_id}/stop",
        summary="End the reply streaming in a session (stored as far as it came, stopped)",
        response_model=StopOut,
    )
    async def stop(session_id: SessionPath, request: Request) -> Response:
        rate_limited(request)
        await service.stop_replies(session_id)
        return json_response({"session_id": session_id, "stopping": True})

    async def listen(request: Request, session_id: str | None, timeout: float | None) -> Response:
        """Wait for a message, unless the caller hangs up first: a Listen whose client has
        gone must not claim a message (nobody would receive it), so the wait is cancelled
        the moment the connection drops, and a message claimed just then is given back."""
        listening = asyncio.ensure_future(service.listen(session_id, timeout))
        hung_up = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait((listening, hung_up), return_when=asyncio.FIRST_COMPLETED)
        finally:
            hung_up.cancel()
            if not listening.done():
                listening.cancel()
            await asyncio.gather(listening, hung_up, return_exceptions=True)
        if listening.cancelled():
            return no_content()  # written to nobody: the client is gone
        listened = listening.result()
        if listened is None:
            return no_content()
        if not hung_up.cancelled():  # it finished: the client left as the message came
            await service.release(listened)
            return no_content()
        return json_response(listened.to_dict())

    @router.get(
        "/listen/message",
        summary="Wait for the next user message of any session",
        response_model=ListenAnswer,
        responses=NO_MESSAGE,
    )
    async def listen_any(
        request: Request, timeout: Annotated[float | None, Query(ge=0, le=86400)] = None
    ) -> Response:
        return await listen(request, None, timeout)

    @router.get(
        "/sessions/{session_id}/listen",
        summary="Wait for the session's next user message",
        response_model=ListenAnswer,
        responses=NO_MESSAGE,
    )
    async def listen_session(
        session_id: SessionPath,
        request: Request,
        timeout: Annotated[float | None, Query(ge=0, le=86400)] = None,
    ) -> Response:
        return await listen(request, session_id, timeout)

    @router.post(
        "/reset/messages",
        summary="Delete every session and its history",
        response_model=dict[str, bool],
    )
    async def reset_messages() -> Response:
        await service.reset_all()
        return json_response({"reset": True})

    @router.post(
        "/chats",
        summary="Set the chat template (applies live)",
        openapi_extra=_schema(Template),
        response_model=Template,
    )
    async def set_template(request: Request) -> Response:
        template = await _body(request, Template, 64 * 1024)
        saved = await service.set_template(template)
        return json_response(saved.model_dump())

    @router.get("/chats", summary="The chat template in force", response_model=Template)
    async def get_template() -> Response:
        return json_response(service.template.model_dump())

    @router.api_route(
        "/sessions/{rest:path}",
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )
    async def bad_session_path(rest: str) -> Response:
        """Any other path under /sessions: most often an id with a `/` in it."""
        raise InvalidInput(
            f"no such route /api/v1/sessions/{rest[:80]}: session ids are 1-128 of "
            "A-Z a-z 0-9 _ . : - (no '/'); URL-encode nothing else"
        )

    return [*fast, *router.routes]
