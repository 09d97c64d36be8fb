"""Benchmarks of the bridge against a minimal reference hub, run side by side in one command.

`python -m bench` (or `make bench`) prints one table; `docs/benchmarks.md` says what each row
means and how it is measured. Modules: `reference_hub` (the yardstick), `servers` (server
processes), `wire` (minimal WebSocket and HTTP clients), `load` (worker processes),
`scenarios` (what is measured), `table` (medians, ratios, targets), `run` (the command),
`asgi_cost` (CPU per POST of each app alone, no sockets).
"""

__all__: list[str] = []
