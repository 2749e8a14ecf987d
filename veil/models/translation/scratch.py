"""A small translation model trained from scratch on the generated document-grounded set, on CPU.

No local model translates English into Chinese (SmolLM2-135M does not), so RAGtrans (arXiv:2412.04342) is
tested, as the DeepRAG experiment tests DeepRAG, on a small Llama trained here from random weights with
TRL, over a tokenizer trained on the task's own text:

* **Tokenizer.** A Metaspace BPE (:func:`veil.models.distillation.students.train_metaspace_bpe`) trained
  on the English side of the task; every English entity name is one token
  (:func:`veil.models.entity_tokens.with_entity_tokens`, ``entity_tokens``), so that the source's name
  and the document's name are the same token and telling a relevant document from a namesake's is one
  comparison. Every non-ASCII character (Chinese characters, full-width punctuation) is a token of its
  own: a rendering such as ``索卡河`` is then the same three tokens in a document and in the translation,
  and copying it is plain induction over characters the model has seen in other renderings (held-out
  entities' renderings are new *combinations* of known characters, never unseen tokens). A normaliser
  puts spaces inside full-width parentheses, so that ``（Tavreno River）`` in a Chinese document gives the
  same name token as the English source.
* **Model.** :class:`ScratchConfig` sets a Llama of ``layers`` x ``hidden`` (tied embeddings), trained by
  :func:`veil.models.translation.sft.fine_tune` (TRL's ``SFTTrainer``, loss on the answer only).

These choices are ours: the paper fine-tunes pretrained LLMs, which already copy names and read Chinese.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from veil.models.scratch import scratch_llama
from veil.models.translation.sft import TranslationSFTConfig

__all__ = ["ScratchConfig", "build_model", "build_tokenizer"]

# literal "▁" and "▂" (the Rust regex engine of ``tokenizers`` reads no \u escapes)
_NON_ASCII = "[^\\x00-\\x7F\u2581\u2582]"


@dataclass(frozen=True)
class ScratchConfig:
    """The tokenizer, model and training of a from-scratch translator (see the module docstring).

    Attributes
    ----------
    vocab_size: the English BPE's size (the non-ASCII characters and the names come on top).
    entity_tokens: every English entity name one token.
    rendering_tokens: every Chinese rendering one token (in documents and translations alike), so that
        using a document is copying one token; held-out entities' renderings are then tokens never
        trained as an answer, and the copy has to be generic (see benchmarks/README.md for how it fares).
        ``"stem"``: the rendering's characters before its kind's word are one token (a pool's stems recur
        across entities and kinds, so each is trained far more often than a whole rendering).
    hidden, layers: the Llama's width and depth (heads of 32 dimensions).
    sft: the training (every model compared gets the same settings and number of examples).
    seed: seeds the weights.
    """

    vocab_size: int = 1000
    entity_tokens: bool = True
    rendering_tokens: bool | str = True
    hidden: int = 128
    layers: int = 2
    sft: TranslationSFTConfig = field(
        default_factory=lambda: TranslationSFTConfig(
            lr=3e-3,
            epochs=1.0,
            batch_size=4,
            grad_accum=1,
            warmup_ratio=0.05,
            max_length=384,
            group_by_length=True,
        )
    )
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rendering_tokens not in (True, False, "stem"):
            raise ValueError(f"rendering_tokens must be True, False or 'stem', got {self.rendering_tokens!r}")
        if self.vocab_size <= 300 or self.hidden < 32 or self.layers < 1:
            raise ValueError(
                f"vocab_size > 300, hidden >= 32 and layers >= 1 are required, got {self.vocab_size}, "
                f"{self.hidden}, {self.layers}"
            )


def build_tokenizer(
    texts: Iterable[str], names: Sequence[str], cfg: ScratchConfig, renderings: Sequence[str] = ()
) -> Any:
    """A tokenizer for ``texts`` (every text the model will read or write), ``names`` one token each.

    The BPE is trained on the texts with the names and the non-ASCII characters removed (its merges go
    to English words); the non-ASCII characters of the texts are added as single tokens, and so is each
    of ``renderings`` (Chinese words kept whole where they occur) when ``cfg.rendering_tokens``.
    """
    import re

    from tokenizers import Regex, normalizers, pre_tokenizers

    from veil.models.distillation.students import train_metaspace_bpe
    from veil.models.entity_tokens import JOIN, SPACE, with_entity_tokens

    texts = list(texts)
    names = sorted(set(names), key=lambda n: (-len(n), n)) if cfg.entity_tokens else []
    # JOIN too: a name that no space precedes is not isolated, and its joined pieces must decode
    chars = sorted({c for t in texts for c in re.findall(_NON_ASCII, t)} | {JOIN})
    english = [re.sub(_NON_ASCII, " ", t) for t in texts]
    if names:
        pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, names)) + r")\b")
        english = [pattern.sub(" ", t) for t in english]
    # "a\n b": the BPE sees the pieces the pre-tokeniser below makes of "a\nb"
    tokenizer = _with_characters(
        train_metaspace_bpe([t.replace("\n", "\n ") for t in english], cfg.vocab_size), chars
    )
    words = sorted(set(renderings), key=lambda w: (-len(w), w)) if cfg.rendering_tokens else []
    if words:
        tokenizer = _with_characters(tokenizer, words)
    # one split: a rendering where one starts (longest first), else one character
    alternatives = "|".join([*map(re.escape, words), _NON_ASCII])
    pre = [
        pre_tokenizers.Split("\n", behavior="merged_with_previous"),
        pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always", split=True),
        pre_tokenizers.Split(Regex(alternatives), behavior="isolated"),
    ]
    if names:
        tokenizer = with_entity_tokens(tokenizer, names, pre)
    else:
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(pre)
    backend = tokenizer.backend_tokenizer
    spaced = [normalizers.Replace("（", "（ "), normalizers.Replace("）", " ）")]
    backend.normalizer = normalizers.Sequence(
        [*spaced, *([backend.normalizer] if backend.normalizer else [])]
    )
    return tokenizer


def _with_characters(tokenizer: Any, chars: Sequence[str]) -> Any:
    """``tokenizer`` with each of ``chars`` a vocabulary entry (added after training, so that thousands
    of characters do not take the BPE's budget of merges)."""
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    for c in chars:
        spec["model"]["vocab"].setdefault(c, len(spec["model"]["vocab"]))
    spec["model"]["ignore_merges"] = True  # a pre-token found whole in the vocabulary stays whole
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        eos_token=tokenizer.eos_token,
        pad_token=tokenizer.pad_token,
        chat_template=tokenizer.chat_template,
        clean_up_tokenization_spaces=False,
    )


def build_model(tokenizer: Any, cfg: ScratchConfig) -> Any:
    """A randomly initialised Llama for ``tokenizer`` (seeded by ``cfg.seed``)."""
    return scratch_llama(tokenizer, cfg.hidden, cfg.layers, cfg.seed)
