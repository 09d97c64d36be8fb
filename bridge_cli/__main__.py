"""`python -m bridge_cli` is `streamlit-bridge`."""

from bridge_cli.cli import main

raise SystemExit(main())
