"""`python -m bridge` is `streamlit-bridge` (protocol.md, names).

A launcher, not part of the server package: `import bridge` never runs it, and it is the
one file under `bridge/` that reaches the command line's package, which adds the client
commands (send, tail, listen, chat, demo-bot, up) to `serve`.
"""

from bridge_cli.cli import main

raise SystemExit(main())
