"""Failing Step (test): a flow step that always fails, like a model whose URL Langflow refuses."""

from lfx.custom import Component
from lfx.io import MessageTextInput, Output
from lfx.schema.message import Message


class StreamlitBridgeTestFailingStep(Component):
    """Raises whenever it runs."""

    display_name = "Failing Step (test)"
    description = "Always fails, like a model or tool that errors after Listen took a message."
    name = "StreamlitBridgeTestFailingStep"

    inputs = [  # noqa: RUF012
        MessageTextInput(name="input_value", display_name="Input", value=""),
    ]
    outputs = [  # noqa: RUF012
        Output(display_name="Text", name="text", method="fail", cache=False),
    ]

    def fail(self) -> Message:
        """Never returns."""
        raise RuntimeError("Failing Step (test) failed on purpose.")
