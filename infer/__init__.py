"""Single-example inference."""
