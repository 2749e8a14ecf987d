"""The CLI's one error type: the caller's mistake, printed as one line with exit code 2."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """Raised for errors that are the caller's to fix; printed as one line, exit code 2."""
