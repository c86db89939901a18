"""Command-line tools (absl flags -> one library call each)."""
