"""Scripted Chat Model (test): an offline chat model component that streams token by token.

A Langflow model component (LCModelComponent, like the OpenAI one) whose language model is a
LangChain chat model answering `You said: <input>`, one word per chunk. With `Stream` on and
Chat Output downstream, Langflow streams its chunks as `token` events, which the v2 workflow
API sends as AG-UI TEXT_MESSAGE_CONTENT deltas. Its inputs make the other test flows:

- Remember: also say which earlier inputs of the same session it saw,
  `You said: b (I remember: a)`. Bare `lfx serve` has no message store (Message History always
  finds nothing there), so the memory is this process's, keyed by the run's session_id.
- Extra Tokens / Token Delay: after the reply, stream `Extra Tokens` more chunks (` 1`, ` 2`,
  ...), waiting `Token Delay` seconds before each; the LFX_TEST_TOKEN_DELAY environment variable
  of the server process overrides the delay.
- Fail After: raise RuntimeError("the model exploded") after that many chunks (0: before the
  first one); -1 never fails.

When the server process has LFX_TEST_TRACE set (a file path, set by the test fixture), each
streamed reply appends JSON lines to it: `start`, then `finished`, `cancelled` (the run's task
was cancelled mid-reply, e.g. because the HTTP client went away), `closed` (the chunk iterator
was closed early) or `failed`, each with the session, the input and the number of chunks
(`planned` on `start`, `sent` so far on the others).
"""

import asyncio
import json
import os
import sys
import time
import types
from typing import Any

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from lfx.base.models.model import LCModelComponent
from lfx.field_typing import LanguageModel
from lfx.io import BoolInput, FloatInput, IntInput


def _memory() -> dict[str, list[str]]:
    """session_id -> the user inputs seen so far, oldest first.

    One per server process, whichever copy of this code runs (each flow embeds its own). A
    function, not a top-level `if`: Langflow runs only a component file's imports, classes,
    functions and assignments.
    """
    name = "_streamlit_bridge_test_chat_memory"
    module = sys.modules.setdefault(name, types.ModuleType(name))
    if not hasattr(module, "inputs"):
        module.inputs = {}
    return module.inputs


def _trace(event: str, **fields: Any) -> None:
    path = os.environ.get("LFX_TEST_TRACE")
    if path:
        line = json.dumps({"event": event, "time": time.time(), "pid": os.getpid(), **fields})
        with open(path, "a", encoding="utf-8") as trace:
            trace.write(line + "\n")


class ScriptedChatModel(BaseChatModel):
    """Answers `You said: <last message>`, streamed one word per chunk."""

    session_id: str = ""
    remember: bool = False
    extra_tokens: int = 0
    token_delay: float = 0.0
    fail_after: int = -1

    @property
    def _llm_type(self) -> str:
        return "streamlit-bridge-scripted"

    def _chunks(self, messages: Any) -> list[str]:
        last = messages[-1] if messages else None
        content = getattr(last, "content", "")
        text = content if isinstance(content, str) else ""
        reply = f"You said: {text}"
        if self.remember:
            seen = _memory().setdefault(self.session_id, [])
            reply += f" (I remember: {' | '.join(seen) if seen else 'nothing'})"
            seen.append(text)
        words = reply.split(" ")
        chunks = [word + " " for word in words[:-1]] + [words[-1]]
        return chunks + [f" {n}" for n in range(1, self.extra_tokens + 1)]

    def _check_fail(self, sent: int, text: str) -> None:
        if sent == self.fail_after:
            _trace("failed", session_id=self.session_id, input=text, sent=sent)
            raise RuntimeError("the model exploded")

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        chunks = self._chunks(messages)
        if self.fail_after >= 0:
            raise RuntimeError("the model exploded")
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content="".join(chunks)))])

    async def _astream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any):
        text = getattr(messages[-1], "content", "") if messages else ""
        chunks = self._chunks(messages)
        delay = float(os.environ.get("LFX_TEST_TOKEN_DELAY", self.token_delay))
        _trace("start", session_id=self.session_id, input=text, planned=len(chunks))
        sent = 0
        try:
            for index, chunk in enumerate(chunks):
                self._check_fail(sent, text)
                if index >= len(chunks) - self.extra_tokens and delay > 0:
                    await asyncio.sleep(delay)  # wait-ok: a slow model is what is tested
                yield ChatGenerationChunk(message=AIMessageChunk(content=chunk))
                sent += 1
            self._check_fail(sent, text)
        except asyncio.CancelledError:
            _trace("cancelled", session_id=self.session_id, input=text, sent=sent)
            raise
        except GeneratorExit:
            _trace("closed", session_id=self.session_id, input=text, sent=sent)
            raise
        _trace("finished", session_id=self.session_id, input=text, sent=sent)


class StreamlitBridgeTestScriptedModel(LCModelComponent):
    """A model component for tests: deterministic replies, streamed, no network."""

    display_name = "Scripted Chat Model (test)"
    description = "Streams 'You said: <input>' word by word; offline, for tests."
    name = "StreamlitBridgeTestScriptedModel"

    inputs = [  # noqa: RUF012
        *LCModelComponent._base_inputs,
        BoolInput(name="remember", display_name="Remember", value=False),
        IntInput(name="extra_tokens", display_name="Extra Tokens", value=0),
        FloatInput(name="token_delay", display_name="Token Delay", value=0.0),
        IntInput(name="fail_after", display_name="Fail After", value=-1),
    ]

    def build_model(self) -> LanguageModel:
        return ScriptedChatModel(
            session_id=str(self.graph.session_id or ""),
            remember=bool(self.remember),
            extra_tokens=int(self.extra_tokens or 0),
            token_delay=float(self.token_delay or 0.0),
            fail_after=int(-1 if self.fail_after is None else self.fail_after),
        )
