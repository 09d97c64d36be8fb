"""Building the main recipe in Langflow's own editor (Debian Chromium through Playwright).

Streamlit Listen's outputs used to be one dropdown: connecting Session ID to Send and then
Message Content to another node dropped the first edge. Here both connections are dragged in the
editor of the real server, saved, and still there after a reload, on the page and in the flow
the server stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from tests.browser_support import launch_chromium
from tests.langflow_support.server import LANGFLOW_TEST_TIMEOUT, Node, RunningLangflow
from tests.support import wait_until

pytest_plugins = ["tests.langflow_support.fixtures"]
pytestmark = [
    pytest.mark.browser,
    pytest.mark.langflow,
    pytest.mark.slow,
    pytest.mark.timeout(LANGFLOW_TEST_TIMEOUT),
]

UI_WAIT_MS = 60_000  # bound of every wait on the editor (its first load compiles a lot of JS)
SAVE_WAIT = 60.0  # seconds: bound of the wait for the editor's own save to reach the server


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


def handle(page: Page, node: Node, label: str, side: str) -> Locator:
    """A connection handle of a node on the canvas, as the editor labels it."""
    test_id = f"handle-{node.type.lower()}-shownode-{label.lower()}-{side}"
    return page.locator(f'[data-nodeid="{node.id}"][data-testid="{test_id}"]')


def stored_connections(langflow: RunningLangflow, flow_id: str) -> set[tuple[str, str, str, str]]:
    """(source, output, target, input) of each edge of the flow as the server stored it."""
    edges = langflow.get_flow(flow_id)["data"]["edges"]
    return {
        (
            e["source"],
            e["data"]["sourceHandle"]["name"],
            e["target"],
            e["data"]["targetHandle"]["fieldName"],
        )
        for e in edges
    }


def test_listen_session_id_and_message_content_go_to_two_nodes_and_stay_after_reload(
    langflow: RunningLangflow, browser: Browser, tmp_path: Path
) -> None:
    lf = langflow
    listen = lf.node("StreamlitBridgeListen", position=(0, 0))
    send = lf.node("StreamlitBridgeSend", position=(600, -200))
    chat_output = lf.node("ChatOutput", "input_output", position=(600, 300))
    flow_id = lf.create_flow("editor", [listen, send, chat_output])
    expected = {
        (listen.id, "session_id", send.id, "session_id"),
        (listen.id, "message_content", chat_output.id, "input_value"),
    }
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(UI_WAIT_MS)
    page.goto(f"{lf.url}/flow/{flow_id}")

    # All four outputs are shown at once (as a dropdown only the selected one would be).
    for label in ("Session ID", "Message Content", "History", "History Text"):
        expect(handle(page, listen, label, "right")).to_be_visible()
    handle(page, listen, "Session ID", "right").drag_to(handle(page, send, "Session ID", "left"))
    handle(page, listen, "Message Content", "right").drag_to(
        handle(page, chat_output, "Inputs", "left")
    )

    edges = page.locator(".react-flow__edge")
    expect(edges).to_have_count(2)
    # The editor saves by itself a moment after a change.
    wait_until(lambda: stored_connections(lf, flow_id) == expected, SAVE_WAIT, "the editor's save")

    page.reload()
    expect(handle(page, send, "Session ID", "left")).to_be_visible()
    expect(edges).to_have_count(2)
    for source, output, target, field_name in expected:
        # An edge's test id holds both of its handles, in the `œ` format flows are stored in.
        one_edge = (
            f'.react-flow__edge[data-testid*="œidœ:œ{source}œ,œnameœ:œ{output}œ"]'
            f'[data-testid*="œfieldNameœ:œ{field_name}œ,œidœ:œ{target}œ"]'
        )
        expect(page.locator(one_edge)).to_have_count(1)
    expect(page.get_by_text("Some connections were removed")).to_have_count(0)
    page.wait_for_load_state("networkidle")
    page.screenshot(path=tmp_path / "langflow-editor.png")
    assert stored_connections(lf, flow_id) == expected
