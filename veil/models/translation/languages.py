"""The languages Veil's translation methods know, by BCP 47 code (RFC 5646).

A code is matched on its primary subtag, case-insensitively: ``zh``, ``zh-Hans`` and ``zh-CN`` are all
Chinese. The names are what the agents' prompts and the DRT-o1 user prompt (arXiv:2412.17498) say.
"""

from __future__ import annotations

__all__ = ["LANGUAGE_NAMES", "is_chinese", "language_name", "primary_subtag"]

LANGUAGE_NAMES: dict[str, str] = {
    "en": "English",
    "zh": "Chinese",
    "de": "German",
    "fr": "French",
    "cs": "Czech",
}
"""Primary subtag -> English name; RAGtrans (arXiv:2412.04342) uses documents in these five."""


def primary_subtag(code: str) -> str:
    """``"zh-Hans-CN"`` -> ``"zh"``; raises ``ValueError`` for a code that is not 2-3 letters first.

    >>> primary_subtag("ZH-hans")
    'zh'
    """
    head = code.split("-", 1)[0].lower() if isinstance(code, str) else ""
    if not (2 <= len(head) <= 3 and head.isascii() and head.isalpha()):
        raise ValueError(f"a language must be a BCP 47 code such as 'en' or 'zh', got {code!r}")
    return head


def language_name(code: str) -> str:
    """The English name of a supported language; ``ValueError`` names the supported codes otherwise."""
    head = primary_subtag(code)
    if head not in LANGUAGE_NAMES:
        raise ValueError(f"unsupported language {code!r}; supported: {', '.join(LANGUAGE_NAMES)}")
    return LANGUAGE_NAMES[head]


def is_chinese(code: str) -> bool:
    """Whether a BCP 47 code is Chinese (any script or region)."""
    return primary_subtag(code) == "zh"
