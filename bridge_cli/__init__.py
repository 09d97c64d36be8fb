"""`streamlit-bridge`, the command line: the one package that imports both sides.

    bridge/            the server; imports neither of the others
    streamlit_client/  every client: the protocol client, the page, the demo bot;
                       imports `bridge.wire` and nothing else of `bridge`
    bridge_cli/        this: `serve` from `bridge`, every other command from the client side

`bridge_cli.cli.main` is the console script; `python -m bridge` (the protocol's spelling)
and `python -m bridge_cli` run it too.
"""

from __future__ import annotations

__all__: list[str] = []
