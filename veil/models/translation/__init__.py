"""Translation: long-thought translation (DRT-o1, arXiv:2412.17498) and document-grounded translation
(RAGtrans, arXiv:2412.04342), their data and metrics.

* :mod:`~veil.models.translation.languages`: supported BCP 47 codes and their names.
* :mod:`~veil.models.translation.metrics`: sacreBLEU corpus BLEU (``zh`` tokenizer for Chinese, ``13a``
  otherwise), chrF, and term accuracy.
* :mod:`~veil.models.translation.data`: HSK zh-en pairs (``hsk-sentences-audio``) and readers for
  MetaphorTrans ``{text, trans, thought}`` and RAGtrans ``{src, tgt, doc, tag}`` files.
* :mod:`~veil.models.translation.similes`: a literary simile set mined from gensim's English prose.
* :mod:`~veil.models.translation.grounded`: a generated set whose entity renderings appear only in
  documents, with clean, irrelevant and partially wrong documents.
* :mod:`~veil.models.translation.thought`: the ``<thought>...</thought><output>...</output>`` format, DRT-o1's
  prompts and the parser that never raises.

Imported by their own paths, because they load torch through :mod:`veil.models.rag.lm`:

* :mod:`~veil.models.translation.long_thought`: DRT-o1's translator-advisor-evaluator loop;
* :mod:`~veil.models.translation.grounded_translate`: RAGtrans-style translation with documents, each
  judged for relevance first, the irrelevant ones dropped;
* :mod:`~veil.models.translation.multitask`: RAGtrans's multi-task training examples (grounded
  translation and three auxiliary objectives built from parallel text);
* :mod:`~veil.models.translation.sft`: supervised fine-tuning on either method's examples with TRL.

Importing this package loads neither torch nor sacreBLEU.
"""

from veil.models.translation.data import (
    HSK_LEVELS,
    MetaphorTransRecord,
    RagTransRecord,
    TranslationPair,
    hsk_pairs,
    load_metaphortrans,
    load_ragtrans,
)
from veil.models.translation.errors import (
    AssetNotInstalledError,
    MalformedRecordError,
    TranslationDataError,
    TranslationError,
)
from veil.models.translation.grounded import (
    ENTITY_KINDS,
    NOISE_KINDS,
    Entity,
    GroundedExample,
    GroundedSetConfig,
    grounded_records,
    grounded_set,
)
from veil.models.translation.languages import LANGUAGE_NAMES, is_chinese, language_name
from veil.models.translation.metrics import (
    CorpusScore,
    bleu_tokenizer,
    corpus_bleu,
    corpus_chrf,
    sentence_chrf,
    term_accuracy,
)
from veil.models.translation.similes import SIMILE_SOURCES, SimileSentence, simile_cue, simile_set
from veil.models.translation.thought import (
    DRT_SYSTEM_PROMPT,
    ParsedOutput,
    drt_user_prompt,
    parse_long_thought,
    render_long_thought,
)

__all__ = [
    "DRT_SYSTEM_PROMPT",
    "ENTITY_KINDS",
    "HSK_LEVELS",
    "LANGUAGE_NAMES",
    "NOISE_KINDS",
    "SIMILE_SOURCES",
    "AssetNotInstalledError",
    "CorpusScore",
    "Entity",
    "GroundedExample",
    "GroundedSetConfig",
    "MalformedRecordError",
    "MetaphorTransRecord",
    "ParsedOutput",
    "RagTransRecord",
    "SimileSentence",
    "TranslationDataError",
    "TranslationError",
    "TranslationPair",
    "bleu_tokenizer",
    "corpus_bleu",
    "corpus_chrf",
    "drt_user_prompt",
    "grounded_records",
    "grounded_set",
    "hsk_pairs",
    "is_chinese",
    "language_name",
    "load_metaphortrans",
    "load_ragtrans",
    "parse_long_thought",
    "render_long_thought",
    "sentence_chrf",
    "simile_cue",
    "simile_set",
    "term_accuracy",
]
