"""Workflows that compose data, models/engine, metrics and viz for the CLI: train, evaluate,
predict, demo. Like ``hitl`` and ``server``, nothing below imports this package."""
