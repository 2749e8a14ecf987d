"""Evaluation harnesses that measure a model through its chat interface (any OpenAI-compatible endpoint)."""

__all__: list[str] = []
