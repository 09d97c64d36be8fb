"""Langflow components for the streamlit-bridge (one self-contained file per component).

Point LANGFLOW_COMPONENTS_PATH at the parent folder (`langflow_component/`); Langflow shows
these under the "streamlit_bridge" category. Langflow's loaders skip this file, and the
components must not import each other or anything of this repository: Langflow rebuilds each
node from its own file's source. So each file carries a generated copy of the shared helpers
(between `# --- begin shared helpers` and `# --- end shared helpers`), written from
`langflow_component/__shared_helpers__.py` by `make components`. See docs/langflow.md.
"""
