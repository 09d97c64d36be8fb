"""Writes the flow JSON files in this folder (tests/flows/*.json), which `lfx serve` serves.

Run it after changing a component under components/ (the flows embed its source, as a saved
flow does):

    .venv/bin/python -m tests.flows.build_flows

Each flow is built with lfx's own Graph and exported with `Graph.dump()`, then trimmed to what
`lfx serve` needs to load it: per node its type, its outputs and, in its template, the code plus
the fields the flow sets or an edge feeds. Flow ids are fixed (FLOW_IDS), so `lfx serve` gives
every flow the same id on every start.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

FLOWS_DIR = Path(__file__).resolve().parent
COMPONENTS_DIR = FLOWS_DIR / "components"

# file stem -> the flow id `lfx serve` uses (the JSON's own "id")
FLOW_IDS = {
    "stream_chat": "5b1e0c4e-7a52-4a8e-9d3c-0000000000a1",
    "memory_chat": "5b1e0c4e-7a52-4a8e-9d3c-0000000000a2",
    "failing": "5b1e0c4e-7a52-4a8e-9d3c-0000000000a3",
    "slow_chat": "5b1e0c4e-7a52-4a8e-9d3c-0000000000a4",
    "failing_midway": "5b1e0c4e-7a52-4a8e-9d3c-0000000000a5",
    "whole_chat": "5b1e0c4e-7a52-4a8e-9d3c-0000000000a6",
}

# What each flow's model does (inputs of components/scripted_chat_model.py).
FLOW_MODELS: dict[str, dict[str, Any]] = {
    "stream_chat": {},
    "memory_chat": {"remember": True},
    "failing": {"fail_after": 0},
    "slow_chat": {"extra_tokens": 200, "token_delay": 0.05},
    "failing_midway": {"fail_after": 3},
    "whole_chat": {"stream": False},
}

DESCRIPTIONS = {
    "stream_chat": "Chat Input -> Scripted Chat Model (streams 'You said: <input>') -> Chat Output",
    "memory_chat": "Like stream_chat, and the reply names the session's earlier inputs",
    "failing": "The model raises RuntimeError('the model exploded') before its first token",
    "slow_chat": "Like stream_chat, then 200 more tokens ' 1' .. ' 200', one per 50 ms "
    "(LFX_TEST_TOKEN_DELAY overrides)",
    "failing_midway": "The model streams 'You said: ' and the input's first word, then raises "
    "RuntimeError('the model exploded')",
    "whole_chat": "Like stream_chat with the model's Stream switch off: the reply comes whole",
}

MODEL_SOURCE = COMPONENTS_DIR / "scripted_chat_model.py"
OUTPUT_KEYS = ("name", "method", "types")


def model_source() -> str:
    return MODEL_SOURCE.read_text(encoding="utf-8")


def build_flow(stem: str) -> dict[str, Any]:
    """One flow: Chat Input -> Scripted Chat Model (Stream on) -> Chat Output."""
    from lfx.components.input_output import ChatInput, ChatOutput
    from lfx.custom.eval import eval_custom_component_code
    from lfx.graph import Graph

    source = model_source()
    settings = {"stream": True, **FLOW_MODELS[stem]}
    chat_input = ChatInput(_id="ChatInput-in")
    model = eval_custom_component_code(source)(_code=source, _id="ScriptedModel-m", **settings)
    model.set(input_value=chat_input.message_response)
    chat_output = ChatOutput(_id="ChatOutput-out")
    chat_output.set(input_value=model.text_response)
    graph = Graph(chat_input, chat_output, flow_id=FLOW_IDS[stem], flow_name=stem)
    dumped = graph.dump(name=stem, description=DESCRIPTIONS[stem])
    return trim(dumped, stem, keep={"ScriptedModel-m": set(settings)})


def trim(dumped: dict[str, Any], stem: str, keep: dict[str, set[str]]) -> dict[str, Any]:
    """Drop what lfx does not read: editor metadata, defaults, display texts."""
    edge_targets = {
        (e["target"], e["data"]["targetHandle"]["fieldName"]) for e in dumped["data"]["edges"]
    }
    nodes = []
    for node in dumped["data"]["nodes"]:
        spec = node["data"]["node"]
        template: dict[str, Any] = {"_type": spec["template"]["_type"]}
        for name, field in spec["template"].items():
            if name == "code":
                template[name] = {"type": field["type"], "value": field["value"]}
            elif name in keep.get(node["id"], set()):  # lfx skips a field not shown
                template[name] = {"type": field["type"], "value": field["value"], "show": True}
            elif (node["id"], name) in edge_targets:
                template[name] = {"type": field["type"], "value": ""}
        outputs = [{k: o[k] for k in OUTPUT_KEYS if k in o} for o in spec["outputs"]]
        nodes.append(
            {
                "id": node["id"],
                "data": {
                    "id": node["id"],
                    "type": node["data"]["type"],
                    "node": {"template": template, "outputs": outputs},
                },
            }
        )
    edges = [
        {"source": e["source"], "target": e["target"], "data": e["data"]}
        for e in dumped["data"]["edges"]
    ]
    return {
        "id": FLOW_IDS[stem],
        "name": stem,
        "description": DESCRIPTIONS[stem],
        "data": {"nodes": nodes, "edges": edges},
    }


def main() -> None:
    os.environ.setdefault("LANGFLOW_CONFIG_DIR", tempfile.mkdtemp(prefix="lfx-config-"))
    for stem in FLOW_IDS:
        path = FLOWS_DIR / f"{stem}.json"
        path.write_text(json.dumps(build_flow(stem), indent=1) + "\n", encoding="utf-8")
        print(f"wrote {path.relative_to(FLOWS_DIR.parent.parent)}")


if __name__ == "__main__":
    main()
