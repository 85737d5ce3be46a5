"""Errors raised by the offline training package."""

from __future__ import annotations

__all__ = ["DataError", "SpaceError", "TrainingError"]


class TrainingError(Exception):
    """Base class of every error raised by :mod:`training`."""


class DataError(TrainingError, ValueError):
    """A training file or one of its columns cannot be used (the CLI exits 2)."""


class SpaceError(TrainingError, ValueError):
    """A search-space file or key cannot be used (the CLI exits 2)."""
