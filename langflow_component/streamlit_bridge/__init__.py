"""Langflow components for the streamlit-bridge (one self-contained file per component).

Point LANGFLOW_COMPONENTS_PATH at the parent folder (`langflow_component/`); Langflow shows
these under the "streamlit_bridge" category. Langflow's loaders skip this file, and the
components must not import each other or anything of this repository: Langflow rebuilds each
node from its own file's source. See docs/langflow.md.
"""
