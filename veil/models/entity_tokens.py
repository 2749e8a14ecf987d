"""Names as single tokens of a Metaspace BPE, for small models trained from scratch.

A model trained from scratch on a few thousand examples copies a name it reads into what it writes far
more easily when the name is one token (one induction step) than when it is 3-5 BPE pieces. The DeepRAG
experiment (:mod:`veil.models.rag.experiment`) and the translation experiment
(:mod:`veil.models.translation.scratch`) build their tokenizers with :func:`with_entity_tokens`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["JOIN", "SPACE", "with_entity_tokens"]

SPACE, JOIN = "\u2581", "\u2582"
"""Metaspace's visible space, and the character that joins a name's words into one pre-token."""


def with_entity_tokens(tokenizer: Any, names: Sequence[str], pre: list[Any]) -> Any:
    """``tokenizer`` rebuilt with each of ``names`` one vocabulary entry.

    A normaliser joins each name's words with :data:`JOIN`, ``pre`` (a list of ``tokenizers``
    pre-tokenizers ending with a Metaspace split) runs, then a split isolates ``▁The▂Gusim`` from what
    follows (``?``, ``.``); the name sits in the BPE's vocabulary (``ignore_merges``: a pre-token found
    whole is not merged), and the decoder turns :data:`JOIN` back into a space. ``names`` should be
    longest first, so that a regex prefers the whole name; train the BPE with the names removed, so its
    merges go to the rest.
    """
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    for n in names:
        vocab.setdefault(SPACE + n.replace(" ", JOIN), len(vocab))
    spec["model"]["ignore_merges"] = True
    backend = Tokenizer.from_str(json.dumps(spec))
    backend.normalizer = normalizers.Sequence(
        [normalizers.Replace(n, n.replace(" ", JOIN)) for n in names if " " in n]
    )
    joined = "|".join(re.escape(SPACE + n.replace(" ", JOIN)) for n in names)
    # after the Metaspace split: "▁The▂Gusim?" -> "▁The▂Gusim", "?" (no "▁" is prepended to "?")
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [*pre, pre_tokenizers.Split(Regex(f"(?:{joined})(?!\\w)"), behavior="isolated")]
    )
    backend.decoder = decoders.Sequence([decoders.Replace(JOIN, " "), backend.decoder])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=tokenizer.eos_token,
        pad_token=tokenizer.pad_token,
        chat_template=tokenizer.chat_template,
        clean_up_tokenization_spaces=False,
    )
