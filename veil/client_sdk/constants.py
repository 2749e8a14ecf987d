"""Names and limits that the phone and the service must agree on, defined once.

Dependency-free (standard library only), so the phone, the service, the training code and the simulator
all import these from here, the lowest layer, instead of keeping copies that can drift.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

__all__ = ["IDEMPOTENCY_KEY_PATTERN", "MAX_LABELS", "MAX_TEXT_CHARS", "TASKS", "Task"]

Task = Literal["classification", "next_word"]
"""What an upload (or a training run) learns: a class label, or the word that follows the text."""

TASKS: tuple[Task, ...] = get_args(Task)
"""Every :data:`Task`, in a fixed order (``("classification", "next_word")``)."""

IDEMPOTENCY_KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,128}")
"""What a client-generated ``Idempotency-Key`` must look like, matched in full (``fullmatch``)."""

MAX_TEXT_CHARS = 16_384
"""The longest upload or gradient-request text, in characters."""

MAX_LABELS = 32
"""The most candidate labels one ``/v1/label-losses`` request scores (one prediction)."""
