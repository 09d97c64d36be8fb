"""The bridge's wire shapes under the client's names: `Message`, `Template`, `Listened`.

They are declared once, in `bridge.wire`, and shared by the bridge, every client and the
OpenAPI description; this module only names them for client code. Each reads the
bridge's JSON with `from_dict` and writes it with `to_dict`.
"""

from __future__ import annotations

from bridge.wire import Listened, Template
from bridge.wire import StoredMessage as Message

__all__ = ["Listened", "Message", "Template"]
