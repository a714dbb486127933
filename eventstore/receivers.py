"""Wake subscribers after events commit."""
