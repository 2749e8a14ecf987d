"""Markup to plain text: Markdown for ingested files, MediaWiki leftovers for the Wikipedia sample.

Both return text whose sections are separated by :data:`SECTION_BREAK` (a form feed), which the chunker
(:func:`veil.models.rag.corpus.chunk_document`) never lets a passage straddle.
"""

from __future__ import annotations

import re

__all__ = ["SECTION_BREAK", "strip_markdown", "strip_wiki_leftovers"]

SECTION_BREAK = "\f"
"""Separates sections of a document's text; passages never cross it."""

_FRONT_MATTER = re.compile(r"\A(?:---|\+\+\+)\n.*?\n(?:---|\.\.\.|\+\+\+)[ \t]*(?:\n|\Z)", re.DOTALL)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_ATX_HEADING = re.compile(r"^\s{0,3}#{1,6}(?:\s+(.*?))?\s*#*\s*$")
_SETEXT_UNDERLINE = re.compile(r"^\s{0,3}(=+|-+)\s*$")
_THEMATIC_BREAK = re.compile(r"^\s{0,3}([-*_])(?:\s*\1){2,}\s*$")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_LINK_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s+\S+.*$")
_LINE_PREFIX = re.compile(r"^\s*(?:>\s?)*\s*(?:(?:[-*+]|\d{1,9}[.)])\s+)?(?:\[[ xX]\]\s+)?")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\](?:\([^)]*\)|\[[^\]]*\])")
_AUTOLINK = re.compile(r"<((?:https?|mailto):[^>\s]+)>")
_HTML_TAG = re.compile(r"</?[A-Za-z][^>]*>")
_EMPHASIS = re.compile(r"(?<![\w\\])(\*{1,3}|_{1,3}|~~)(?=\S)|(?<=\S)(\*{1,3}|_{1,3}|~~)(?![\w])")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|>~])")


def _inline(line: str) -> str:
    line = _IMAGE.sub(r"\1", line)
    line = _LINK.sub(r"\1", line)
    line = _AUTOLINK.sub(r"\1", line)
    line = _HTML_TAG.sub("", line)
    line = line.replace("`", "")
    line = _EMPHASIS.sub("", line)
    line = _ESCAPE.sub(r"\1", line)
    return line.replace("|", " ").strip()


def strip_markdown(text: str) -> tuple[str, str]:
    """Plain text of a Markdown document, and its title.

    Front matter, HTML comments and tags, fences, link targets, emphasis markers, list and quote prefixes
    and table rules go; link texts, image alt texts and code lines stay (they are content). Every heading
    starts a new section, with the heading's text as the section's first line.

    Returns
    -------
    (text, title): sections joined by :data:`SECTION_BREAK`; the title is the first level-1 heading, or
    ``""`` when there is none.

    >>> strip_markdown("# Veil\\n\\nSee **[the docs](https://x.org)**.\\n\\n## Use\\n- `veil demo`")
    ('Veil\\nSee the docs.\\x0cUse\\nveil demo', 'Veil')
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _FRONT_MATTER.sub("", text, count=1)
    text = _HTML_COMMENT.sub("", text)
    sections: list[list[str]] = [[]]
    title = ""
    in_fence = False
    for raw in text.split("\n"):
        if _FENCE.match(raw):
            in_fence = not in_fence
            continue
        if in_fence:
            if raw.strip():
                sections[-1].append(raw.strip())
            continue
        heading = _ATX_HEADING.match(raw)
        if heading:
            line = _inline(heading.group(1) or "")
            if not title and raw.lstrip().startswith("# "):
                title = line
            sections.append([line] if line else [])
            continue
        current = sections[-1]
        underline = _SETEXT_UNDERLINE.match(raw)
        # "Title\n=====" is a heading; "---" after a blank line (nothing pending) is a thematic break
        if underline and current and current[-1] and not raw.strip().startswith("- "):
            heading_text = current.pop()
            if not title and underline.group(1).startswith("="):
                title = heading_text
            sections.append([heading_text])
            continue
        if _THEMATIC_BREAK.match(raw) or _TABLE_RULE.match(raw) or _LINK_DEFINITION.match(raw):
            continue
        line = _inline(_LINE_PREFIX.sub("", raw, count=1))
        if line:
            current.append(line)
        elif current and current[-1]:
            current.append("")  # keep the paragraph break, so a setext underline needs a text line above
    bodies = ["\n".join(part for part in section if part) for section in sections]
    return SECTION_BREAK.join(body for body in bodies if body), title


_WIKI_HEADING = re.compile(r"^\s*(={2,6})\s*(.*?)\s*\1\s*$", re.MULTILINE)
_WIKI_QUOTES = re.compile(r"'{2,}")
_WIKI_LEFTOVER = re.compile(r"\{\{[^{}]*\}\}|\[\[|\]\]|__[A-Z]+__")
_WIKI_LIST = re.compile(r"^[*#:;]+[ \t\xa0]*", re.MULTILINE)
_WIKI_APPENDIX = {"references", "notes", "footnotes", "citations", "sources", "bibliography", "see also"}
_WIKI_APPENDIX_PREFIX = ("further reading", "external links")
_BLANK_RUN = re.compile(r"\n\s*\n+")


def strip_wiki_leftovers(text: str) -> str:
    """Finish the plain text of gensim's ``filter_wiki``: quotes, headings, list marks, stray brackets.

    Headings (``== History ==``) become section breaks followed by the heading's text; the appendix
    sections (References, See also, Further reading, External links, ...) are dropped, being lists of
    titles rather than prose.

    >>> strip_wiki_leftovers("'''Albedo''' is [[light]].\\n== History ==\\n* Old.\\n== See also ==\\n* Light")
    'Albedo is light.\\x0cHistory\\nOld.'
    """
    text = _WIKI_HEADING.sub(lambda m: f"{SECTION_BREAK}{m.group(2)}\n", text)
    text = _WIKI_QUOTES.sub("", text)
    text = _WIKI_LEFTOVER.sub("", text)
    text = _WIKI_LIST.sub("", text)
    parts = [_BLANK_RUN.sub("\n", part).strip() for part in text.split(SECTION_BREAK)]
    return SECTION_BREAK.join(part for part in parts if part and not _is_appendix(part))


def _is_appendix(section: str) -> bool:
    heading = section.partition("\n")[0].strip().lower()
    return heading in _WIKI_APPENDIX or heading.startswith(_WIKI_APPENDIX_PREFIX)
