"""Reusable GUI pieces that tabs place inside themselves (each with ``build(ctx, ...) -> dict``)."""
