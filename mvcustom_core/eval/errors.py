"""Errors raised by the evaluation protocol; all are ``ValueError`` subclasses naming the input."""

from __future__ import annotations

__all__ = ["EvalInputError", "MetricUnavailable"]


class EvalInputError(ValueError):
    """An evaluation input (frames, cameras, depth, a generated-set folder) that cannot be scored."""


class MetricUnavailable(ValueError):
    """A learned metric whose package or local weights are missing; the message says what to put where."""
