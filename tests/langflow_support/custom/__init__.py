"""Source of small Langflow components the tests put into flows (read as text, sent to the
server with the flow as custom code, the way an editor user pastes a component). Not part of
LANGFLOW_COMPONENTS_PATH.
"""
