"""Rendering a PunchBench item as a question: instruction templates and shuffled options.

The paper writes several instruction templates per format and shuffles option order (arXiv:2412.11906,
Sec. 3.3); its exact wording is not published, so the templates below are ours (three per format). Which
template and which order an item gets is a pure function of ``(seed, item_id)``, so every strategy sees
the same question for an item and strategies can be compared item by item.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from veil.models.evaluation.punchbench.schema import Item

__all__ = ["LETTERS", "TEMPLATES", "Question", "render"]

LETTERS = "ABCD"
_CONTEXT = "Image (described in words): {context}\n"
TEMPLATES: dict[tuple[str, str], tuple[str, ...]] = {
    ("perception", "yes-no"): (
        'Caption: "{caption}"\nDoes this image-caption pair contain a punchline (humour or sarcasm)? Answer yes or no.',
        'Read the caption "{caption}" together with the image. Is there a punchline? Reply with yes or no.',
        'Is the pairing of this image with the caption "{caption}" humorous or sarcastic? Answer yes or no.',
    ),
    ("perception", "matching"): (
        "Which caption forms a punchline (humour or sarcasm) with the image?\n{options}\nAnswer with the letter.",
        "Two captions are given. Pick the one that makes the image funny or sarcastic.\n{options}\nLetter only.",
        "One of these captions creates a punchline with the image. Which one?\n{options}\nReply with A or B.",
    ),
    ("perception", "multiple-choice"): (
        "Which caption forms a punchline (humour or sarcasm) with the image?\n{options}\nAnswer with the letter.",
        "Exactly one caption below is ironic or funny given the image. Choose it.\n{options}\nLetter only.",
        "Select the caption that turns the image into a joke or sarcasm.\n{options}\nReply with A, B, C or D.",
    ),
    ("reasoning", "yes-no"): (
        'Caption: "{caption}"\nExplanation: "{statement}"\nDoes this correctly explain the punchline? Answer yes or no.',
        'The pair with caption "{caption}" has a punchline. Is this why it is funny: "{statement}"? Yes or no.',
        'Caption: "{caption}"\nDoes the sentence "{statement}" explain the humour or sarcasm? Reply yes or no.',
    ),
    ("reasoning", "matching"): (
        'Caption: "{caption}"\nWhich explains the punchline correctly?\n{options}\nAnswer with the letter.',
        'The caption "{caption}" is funny or sarcastic with the image. Pick the right reason.\n{options}\nLetter only.',
        'Why does "{caption}" form a punchline with the image?\n{options}\nReply with A or B.',
    ),
    ("reasoning", "generation"): (
        'Caption: "{caption}"\nExplain in one sentence why this image-caption pair is funny or sarcastic.',
        'The caption "{caption}" forms a punchline with the image. In one sentence, explain why.',
        'What is the punchline of the caption "{caption}" given the image? Answer in one sentence.',
    ),
}


@dataclass(frozen=True)
class Question:
    """A rendered question: the prompt text and, for option formats, the letter of each option."""

    item_id: str
    text: str
    options: tuple[str, ...]  # in displayed order; letter i is LETTERS[i]
    template: int

    def letter_of(self, option: str) -> str:
        """The letter under which ``option`` is shown."""
        return LETTERS[self.options.index(option)]


def render(item: Item, seed: int = 0, *, with_context: bool = True) -> Question:
    """Render ``item`` with a template and option order drawn from ``(seed, item_id)``.

    Yes-no options are never shuffled (the answer words are fixed); matching and multiple-choice are.
    """
    rng = random.Random(f"punchbench:{seed}:{item.item_id}")
    templates = TEMPLATES.get((item.level, item.format))
    if templates is None:
        raise ValueError(f"no template for level {item.level!r} with format {item.format!r}")
    t = rng.randrange(len(templates))
    options = tuple(item.options)
    if item.format in ("matching", "multiple-choice"):
        options = tuple(rng.sample(options, len(options)))
    listed = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    body = templates[t].format(caption=item.caption, statement=item.statement, options=listed)
    text = (_CONTEXT.format(context=item.context) if with_context and item.context else "") + body
    return Question(item.item_id, text, options, t)
