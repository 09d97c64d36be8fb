"""Flow JSON for `lfx run`, built from the current component files.

The flow is built with lfx's own Graph and exported with `Graph.dump()`, the format Langflow
saves and `lfx run` reads. Each node embeds its component's source, as a saved flow does; building
it at test time keeps that source equal to the files under test.
"""

from __future__ import annotations

from typing import Any

from tests.langflow_support import lfx_config_dir, make_component

ECHO_FLOW_ID = "5b1e0c4e-7a52-4a8e-9d3c-000000000001"


def echo_flow(base_url: str, *, timeout: int = 10) -> dict[str, Any]:
    """Streamlit Listen -> Streamlit Send -> Chat Output: echoes the next user message.

    Chat Output (lfx's own) shows Send's result, the stored message, as the run's result.
    """
    lfx_config_dir()
    from lfx.components.input_output import ChatOutput
    from lfx.graph import Graph

    listen = make_component(
        "listen", base_url=base_url, timeout=timeout, welcome_msg="Echo bot here.", _id="listen"
    )
    send = make_component("send", base_url=base_url, rerun=False, _id="send")
    send.set(session_id=listen.session_id_response, message=listen.message_content_response)
    output = ChatOutput(_id="output")
    output.set(input_value=send.text_response)
    graph = Graph(listen, output, flow_id=ECHO_FLOW_ID, flow_name="streamlit-bridge echo")
    return graph.dump(name="streamlit-bridge echo", description="Listen -> Send echo flow")
