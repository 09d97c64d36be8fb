"""streamlit-bridge: the real-time link between Langflow flows and Streamlit chat pages."""

from bridge.app import create_app
from bridge.settings import Settings

__all__ = ["Settings", "create_app"]
__version__ = "0.1.0"
