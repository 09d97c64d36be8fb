"""A real AG-UI agent server for tests of `--agent-url`: pydantic-ai, no network, no model.

`python -m tests.agui_agent --port N` serves (uvicorn, 127.0.0.1):

- `POST /`: the AG-UI run endpoint. Body: a RunAgentInput
  (`{"threadId", "runId", "state", "messages", "tools", "context", "forwardedProps"}`); answer:
  SSE of AG-UI events from pydantic-ai's AGUIAdapter. The agent's model (a FunctionModel)
  first calls its one tool, `count_messages` (TOOL_CALL_START / ARGS / END, then
  TOOL_CALL_RESULT), then streams one word per TEXT_MESSAGE_CONTENT:
  `I was given 3 messages (user, assistant, user). You said: <last user text>`
  so a test can see what history the client sent. A last user text starting with `explode`
  makes the model raise RuntimeError("the agent exploded") (RUN_ERROR). `--token-delay S`
  waits S seconds before each word.
- `GET /health`: `{"status": "ok"}`.

For tests: the `agui_agent` fixture (session) and `start_agui_agent` (function), or
`with agui_agent_serving() as agent: agent.url`; a module using the fixtures adds
`pytest_plugins = ["tests.agui_agent"]`. pydantic-ai is imported only in the server process.

No `from __future__ import annotations` here: pydantic-ai reads the tool's annotations at run time.
Test modules import from here and list it in `pytest_plugins`: PYTEST_DONT_REWRITE (see
tests/lfx_support.py).
"""

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import ROOT, free_port, stop_process, wait_until

START_TIMEOUT = 60.0
TOOL_NAME = "count_messages"


# ------------------------------------------------------------------------------------ server


@dataclass
class Seen:
    """What the client sent, for the agent's tool: the AG-UI messages' roles, in order."""

    roles: list[str]


def reply_for(roles: list[str], last_user_text: str) -> str:
    """The agent's reply (tests can compute the expected text with this)."""
    noun = "message" if len(roles) == 1 else "messages"
    return f"I was given {len(roles)} {noun} ({', '.join(roles)}). You said: {last_user_text}"


def build_app(token_delay: float = 0.0) -> Any:
    """The Starlette app: an AG-UI endpoint for a pydantic-ai agent on a FunctionModel."""
    from pydantic_ai import Agent, RunContext
    from pydantic_ai.messages import ModelMessage, ModelRequest, ToolReturnPart, UserPromptPart
    from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
    from pydantic_ai.ui.ag_ui import AGUIAdapter
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def last_user_text(messages: list[ModelMessage]) -> str:
        for message in reversed(messages):
            if isinstance(message, ModelRequest):
                for part in reversed(message.parts):
                    if isinstance(part, UserPromptPart):
                        content = part.content
                        return content if isinstance(content, str) else " ".join(map(str, content))
        return ""

    async def stream(
        messages: list[ModelMessage], info: AgentInfo
    ) -> AsyncIterator[str | DeltaToolCalls]:
        last = messages[-1]
        returned = [p for p in getattr(last, "parts", []) if isinstance(p, ToolReturnPart)]
        text = last_user_text(messages)
        if text.startswith("explode"):
            raise RuntimeError("the agent exploded")
        if not returned:  # first step: call the tool
            yield {0: DeltaToolCall(name=TOOL_NAME, json_args="{}")}
            return
        reply = f"I was given {returned[0].content}. You said: {text}"
        words = reply.split(" ")
        for i, word in enumerate(words):
            if token_delay:
                await asyncio.sleep(token_delay)  # wait-ok: a slow model is under test
            yield word if i == len(words) - 1 else word + " "

    agent = Agent(FunctionModel(stream_function=stream), deps_type=Seen)

    @agent.tool
    def count_messages(ctx: RunContext[Seen]) -> str:
        """How many messages the client sent, with their roles."""
        roles = ctx.deps.roles
        noun = "message" if len(roles) == 1 else "messages"
        return f"{len(roles)} {noun} ({', '.join(roles)})"

    async def run(request: Request) -> Response:
        body = await request.json()  # the adapter reads the same (cached) body again
        messages = body.get("messages") if isinstance(body, dict) else None
        roles = [str(m.get("role")) for m in messages or [] if isinstance(m, dict)]
        return await AGUIAdapter.dispatch_request(request, agent=agent, deps=Seen(roles=roles))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[Route("/", run, methods=["POST"]), Route("/health", health, methods=["GET"])]
    )


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--token-delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    uvicorn.run(build_app(args.token_delay), host=args.host, port=args.port, log_level="info")


# ---------------------------------------------------------------------------------- fixtures


@dataclass
class RunningAgent:
    """`python -m tests.agui_agent` on a free port."""

    workdir: Path
    port: int = field(default_factory=free_port)
    token_delay: float = 0.0
    proc: subprocess.Popen[bytes] | None = None
    startup_seconds: float = 0.0

    @property
    def url(self) -> str:
        """The AG-UI endpoint (POST)."""
        return f"http://127.0.0.1:{self.port}/"

    @property
    def log_path(self) -> Path:
        return self.workdir / "agent.log"

    def log_tail(self, chars: int = 3000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]

    def start(self, timeout: float = START_TIMEOUT) -> "RunningAgent":
        started = time.monotonic()
        cmd = [
            sys.executable,
            "-m",
            "tests.agui_agent",
            "--port",
            str(self.port),
            "--token-delay",
            str(self.token_delay),
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        try:
            wait_until(self._healthy, timeout, f"the AG-UI agent on port {self.port}")
        except TimeoutError as exc:
            self.stop()
            raise RuntimeError(
                f"{exc}; its log ({self.log_path}) ends:\n{self.log_tail()}"
            ) from exc
        self.startup_seconds = time.monotonic() - started
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"the AG-UI agent exited with {self.proc.returncode}; its log ends:\n"
                f"{self.log_tail()}"
            )
        try:
            answer = httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2.0)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200 and answer.json() == {"status": "ok"}

    def stop(self) -> None:
        """SIGTERM and wait, SIGKILL if it does not stop within 10 s."""
        stop_process(self.proc)


@contextmanager
def agui_agent_serving(
    token_delay: float = 0.0, keep_workdir: Callable[[], bool] = lambda: False
) -> Iterator[RunningAgent]:
    """Start the agent in a fresh temp folder (its log); stop it and remove the folder after."""
    workdir = Path(tempfile.mkdtemp(prefix="agui-agent-test-"))
    running = RunningAgent(workdir=workdir, token_delay=token_delay)
    try:
        yield running.start()
    finally:
        running.stop()
        if not keep_workdir():
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def agui_agent(request: pytest.FixtureRequest) -> Iterator[RunningAgent]:
    """One AG-UI agent for the whole test session."""
    with agui_agent_serving(keep_workdir=lambda: bool(request.session.testsfailed)) as running:
        yield running


StartAgent = Callable[..., RunningAgent]


@pytest.fixture
def start_agui_agent(request: pytest.FixtureRequest) -> Iterator[StartAgent]:
    """Start agents of the test's own (`start_agui_agent(token_delay=0.0)`); stopped at its end."""
    failed_before = request.session.testsfailed
    with ExitStack() as stack:

        def start(token_delay: float = 0.0) -> RunningAgent:
            return stack.enter_context(
                agui_agent_serving(
                    token_delay=token_delay,
                    keep_workdir=lambda: request.session.testsfailed > failed_before,
                )
            )

        yield start


if __name__ == "__main__":
    main()
