"""Flows for `lfx serve` in tests (see tests/lfx_support.py) and the source they embed."""
