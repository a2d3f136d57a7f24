"""The daily note's opt-in in the app (issue 16)."""
