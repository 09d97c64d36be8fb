"""Source of the components embedded in tests/flows/*.json (read as text, never imported)."""
