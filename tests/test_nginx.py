"""nginx (the Debian package) in front of two bridge instances sharing one Redis.

Round robin, no sticky sessions: a tab's WebSocket and a publisher's POSTs land on
different instances, and the tab still gets every message live, through nginx's
WebSocket upgrade. The config is the one docs/scaling.md shows, with paths in tmp_path.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.redis_support import new_prefix, store_url, wipe_sync
from tests.support import RunningBridge, free_port, wait_until
from tests.wsclient import recv, recv_messages, ws_connect

pytestmark = pytest.mark.redis

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

CONFIG = """\
# Written by tests/test_nginx.py; every path is in the test's own folder.
{user}
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;

    # "Connection: upgrade" only when the client asked for an upgrade.
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    upstream bridges {{
        server 127.0.0.1:{port_a};
        server 127.0.0.1:{port_b};
        keepalive 16;
    }}

    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://bridges;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            # Sockets idle between messages (the bridge pings every 10 s) and Listen
            # calls wait up to 600 s: longer than both.
            proxy_read_timeout 700s;
            proxy_send_timeout 700s;
            # Streamed replies flow chunk by chunk, both ways.
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""


def _write_config(tmp: Path, port: int, port_a: int, port_b: int) -> Path:
    # As root the workers would drop to "nobody", who cannot write into tmp_path.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    path = tmp / "nginx.conf"
    path.write_text(CONFIG.format(user=user, tmp=tmp, port=port, port_a=port_a, port_b=port_b))
    return path


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def two_behind_nginx(
    start_bridge: Callable[..., RunningBridge], tmp_path: Path
) -> Iterator[tuple[str, RunningBridge, RunningBridge]]:
    """(nginx base URL, instance a, instance b); all stopped and wiped afterwards."""
    if not os.access(NGINX, os.X_OK):
        pytest.fail(f"nginx not found at {NGINX}: run scripts/test-services.sh")
    prefix = new_prefix("nginx")
    a = start_bridge(store=store_url(prefix))
    b = start_bridge(store=store_url(prefix))
    port = free_port()
    nginx_dir = tmp_path / "nginx"
    nginx_dir.mkdir()
    config = _write_config(nginx_dir, port, a.port, b.port)
    proc = subprocess.Popen(
        [NGINX, "-p", str(nginx_dir), "-c", str(config), "-e", str(nginx_dir / "error.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {(nginx_dir / 'error.log').read_text()[-2000:]}")
        return _accepts(port)

    try:
        wait_until(ready, 10, f"nginx on port {port}")
        yield f"127.0.0.1:{port}", a, b
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        a.stop()
        b.stop()
        wipe_sync(prefix)


WS = "bridge_ws_connections"


def _metric(bridge: RunningBridge, name: str) -> float:
    return _parse_metric(httpx.get(f"{bridge.url}/metrics").text, name)


def _parse_metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found[1]) if found else 0.0


async def _stored(http: httpx.AsyncClient, bridge: RunningBridge) -> float:
    """Messages this instance stored (its own POSTs and the sessions it created)."""
    return _parse_metric((await http.get(f"{bridge.url}/metrics")).text,
                         "bridge_messages_stored_total")


async def test_socket_and_post_on_different_instances_behind_nginx(
    two_behind_nginx: tuple[str, RunningBridge, RunningBridge],
) -> None:
    host, a, b = two_behind_nginx
    async with ws_connect(f"ws://{host}", "lb") as ws:
        hello = await recv(ws)
        assert hello["event"] == "hello"  # the upgrade went through nginx
        await asyncio.to_thread(
            wait_until, lambda: _metric(a, WS) + _metric(b, WS) == 1, 5,
            "the socket to be counted by one instance",
        )
        tab_on = a if _metric(a, WS) == 1 else b
        other = b if tab_on is a else a
        welcome = await recv_messages(ws, 1)
        assert welcome[0]["seq"] == 1

        landed: list[RunningBridge] = []
        async with httpx.AsyncClient(timeout=10) as http:
            for i in range(2):  # round robin: two POSTs cannot both land on the tab's instance
                before = {x.port: await _stored(http, x) for x in (a, b)}
                resp = await http.post(f"http://{host}/api/v1/sessions/lb/messages",
                                       json={"role": "ai", "content": f"via nginx {i}"})
                assert resp.status_code == 200 and resp.json()["seq"] == i + 2
                after = {x.port: await _stored(http, x) for x in (a, b)}
                landed += [x for x in (a, b) if after[x.port] == before[x.port] + 1]
            assert len(landed) == 2
            assert other in landed, "no POST reached the instance without the socket"
            # ... and the tab, connected to the other instance, got both live, in order.
            got = await recv_messages(ws, 2)
            assert [(m["seq"], m["content"]) for m in got] == [
                (2, "via nginx 0"), (3, "via nginx 1"),
            ]
            info = (await http.get(f"{other.url}/api/v1/sessions/lb")).json()
            assert info["subscribers"] == 1  # presence is shared too
