"""Small helpers shared by the HTML reports (experiment, demo, audit): embedded PNGs, atomic writes."""

from __future__ import annotations

import base64
import io
from typing import Any

from veil.client_sdk.atomic_files import atomic_write_text

__all__ = ["atomic_write_text", "png_base64"]


def png_base64(fig: Any) -> str:
    """A matplotlib figure as base64 PNG, to embed in a self-contained page."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")
