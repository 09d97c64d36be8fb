"""Runs: the bridge answers each user message by running a Langflow flow or an AG-UI agent
and streaming its reply into the session (docs/protocol.md section 7).

`sse` reads Server-Sent Events, `agui` makes progress and text of AG-UI events,
`sources` says where a run goes (Langflow's `/api/v2/workflows` or any AG-UI endpoint),
and `runner` takes user messages from the store one session at a time and runs them.
"""

from bridge.runs.agui import RunFailed
from bridge.runs.runner import Runner
from bridge.runs.sources import RunSource, source_for

__all__ = ["RunFailed", "RunSource", "Runner", "source_for"]
