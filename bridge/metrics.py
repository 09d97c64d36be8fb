"""Prometheus metrics of one app, in a registry of its own (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """What `/metrics` exposes; `render()` gives the Prometheus text format."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge(
            "bridge_ws_connections", "Open WebSocket subscriptions.", registry=r
        )
        self.messages = Counter(
            "bridge_messages_stored", "Messages stored (welcome messages included).", registry=r
        )
        self.duplicates = Counter(
            "bridge_messages_duplicate", "Publishes answered from an idempotency key.", registry=r
        )
        self.deliveries = Counter(
            "bridge_deliveries", "Frames handed to subscriber sockets.", registry=r
        )
        self.slow_consumers = Counter(
            "bridge_slow_consumer_closes",
            "Subscribers closed with 4000 (buffer full).",
            registry=r,
        )
        self.listen_waiting = Gauge(
            "bridge_listen_waiting", "Listen calls waiting for a user message.", registry=r
        )
        self.runs_active = Gauge(
            "bridge_runs_active", "Runs of the flow or agent under way here.", registry=r
        )
        self.runs = Counter(
            "bridge_runs",
            "Runs ended here, by outcome (done, stopped, error, given_back).",
            ["outcome"],
            registry=r,
        )
        self.publish_to_send = Histogram(
            "bridge_publish_to_send_seconds",
            "From accepting an event to handing it to the last local subscriber.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
