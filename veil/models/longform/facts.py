"""``(subject, attribute, value)`` facts stated in text, and contradictions between them.

LongDPO's memory pool (arXiv:2502.02095, §3.2) stores facts that an LLM judge extracts from accepted
steps and asks the judge whether a new chunk contradicts one. The rule-based twin here reads facts in
one fixed form, ``"The <attribute> of <subject> is|was <value>."`` (the form the generated topics state
them in, :mod:`veil.models.longform.data`), and calls two facts contradictory when they give one
subject's attribute two different values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Fact", "contradictions", "extract_facts", "fact_sentence"]

_FACT = re.compile(r"\b[Tt]he ([a-z]+) of ([A-Z][\w' -]*?) (?:is|was) ([^.,;]+?)(?=[.,;]|$)")


@dataclass(frozen=True)
class Fact:
    subject: str
    attribute: str
    value: str

    def key(self) -> tuple[str, str]:
        return self.subject.lower(), self.attribute.lower()


def fact_sentence(fact: Fact) -> str:
    """The fixed form :func:`extract_facts` reads.

    >>> fact_sentence(Fact("Anarchism", "colour", "teal"))
    'The colour of Anarchism is teal.'
    """
    return f"The {fact.attribute} of {fact.subject} is {fact.value}."


def extract_facts(text: str) -> list[Fact]:
    """Every fact stated in the fixed form, in order.

    >>> extract_facts("The year of Autism was 1841. It grew. the colour of Autism is teal, they say.")
    [Fact(subject='Autism', attribute='year', value='1841'), Fact(subject='Autism', attribute='colour', value='teal')]
    """
    return [Fact(s.strip(), a, v.strip()) for a, s, v in _FACT.findall(text)]


def contradictions(facts: Iterable[Fact], known: Iterable[Fact] = ()) -> list[tuple[Fact, Fact]]:
    """Pairs ``(earlier, later)`` that give one subject's attribute different values; ``known`` facts
    count as stated first.

    >>> a, b = Fact("X", "year", "1841"), Fact("X", "year", "1900")
    >>> contradictions([a, Fact("X", "colour", "teal"), b, a])
    [(Fact(subject='X', attribute='year', value='1841'), Fact(subject='X', attribute='year', value='1900'))]
    """
    first: dict[tuple[str, str], Fact] = {}
    for f in known:
        first.setdefault(f.key(), f)
    out = []
    for f in facts:
        seen = first.setdefault(f.key(), f)
        if seen.value.lower() != f.value.lower():
            out.append((seen, f))
    return out
