"""Echo Model (test): an offline language model component.

"Model Response" answers `echo: <input>`; "Language Model" is a LangChain chat model that
streams the same reply word by word, for Streamlit Stream. It holds plain fields only.
"""

from typing import Any

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from lfx.custom import Component
from lfx.field_typing import LanguageModel
from lfx.io import MessageTextInput, Output
from lfx.schema.message import Message


def _echo(messages: Any) -> str:
    last = messages[-1] if messages else None
    content = getattr(last, "content", last)
    return f"echo: {content if isinstance(content, str) else ''}"


class StreamlitBridgeTestEchoModel(Component):
    """A model that repeats its input, for tests without a real model."""

    display_name = "Echo Model (test)"
    description = "Answers 'echo: <input>' (Model Response) or streams it (Language Model)."
    name = "StreamlitBridgeTestEchoModel"

    inputs = [  # noqa: RUF012
        MessageTextInput(name="input_value", display_name="Input", value=""),
    ]
    outputs = [  # noqa: RUF012
        Output(
            display_name="Model Response",
            name="text_output",
            method="text_response",
            cache=False,
            group_outputs=True,
        ),
        Output(
            display_name="Language Model",
            name="model_output",
            method="build_model",
            cache=False,
            group_outputs=True,
        ),
    ]

    def text_response(self) -> Message:
        """The echoed input."""
        text = self.input_value.text if isinstance(self.input_value, Message) else self.input_value
        return Message(text=f"echo: {text or ''}")

    def build_model(self) -> LanguageModel:
        """A chat model that streams the echo word by word."""
        return EchoChatModel()


class EchoChatModel(BaseChatModel):
    """LangChain chat model: replies 'echo: <last message>', streamed one word per chunk."""

    @property
    def _llm_type(self) -> str:
        return "streamlit-bridge-test-echo"

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=_echo(messages)))])

    def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        words = _echo(messages).split(" ")
        for i, word in enumerate(words):
            piece = word if i == len(words) - 1 else word + " "
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
