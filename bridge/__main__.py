"""`python -m bridge` is `streamlit-bridge`."""

from bridge.cli import main

raise SystemExit(main())
