"""PunchBench and SC-CoQ (arXiv:2412.11906): punchline comprehension of image-caption pairs, measured
through any chat model, with prompting strategies compared by paired tests.

Modules: ``schema`` (items), ``questions`` (rendering), ``scoring`` (parsing, judges), ``loader`` (the
published layout), ``synthetic`` (an offline set with verified labels), ``wordnet`` (rewrites),
``strategies`` (zero-shot, few-shot, CoT, SC-CoQ), ``stats`` (McNemar, paired bootstrap), ``participant``
(a scripted model of known accuracy), ``runner`` (resumable runs over an OpenAI-compatible endpoint),
``chain`` (SC-CoQ's dialogue, shared with the chat API), ``agreement`` (two judges' kappa and Gwet's AC1).
"""

from veil.models.evaluation.punchbench.agreement import cohen_kappa, gwet_ac1, judge_agreement
from veil.models.evaluation.punchbench.chain import ChainTurn, ask_chain, chain_dialogue
from veil.models.evaluation.punchbench.loader import PublishedFields, load_published
from veil.models.evaluation.punchbench.participant import ScriptedParticipant
from veil.models.evaluation.punchbench.questions import Question, render
from veil.models.evaluation.punchbench.runner import (
    EndpointError,
    EndpointTimeoutError,
    OpenAIChat,
    ResumeError,
    report,
    run_punchbench,
)
from veil.models.evaluation.punchbench.schema import (
    FORMATS,
    LEVELS,
    VARIANTS,
    Item,
    ItemError,
    item_from_dict,
)
from veil.models.evaluation.punchbench.scoring import LMJudge, RuleJudge, score
from veil.models.evaluation.punchbench.stats import mcnemar_exact, paired_bootstrap
from veil.models.evaluation.punchbench.strategies import (
    STRATEGIES,
    ChainOfThought,
    FewShot,
    SCCoQ,
    UnknownStrategyError,
    ZeroShot,
    make_strategy,
)
from veil.models.evaluation.punchbench.synthetic import (
    LabelRuleError,
    SyntheticConfig,
    build_synthetic,
    load_synthetic,
    verify_items,
)
from veil.models.evaluation.punchbench.wordnet import WordNet, WordNetMissingError

__all__ = [
    "FORMATS",
    "LEVELS",
    "STRATEGIES",
    "VARIANTS",
    "ChainOfThought",
    "ChainTurn",
    "EndpointError",
    "EndpointTimeoutError",
    "FewShot",
    "Item",
    "ItemError",
    "LMJudge",
    "LabelRuleError",
    "OpenAIChat",
    "PublishedFields",
    "Question",
    "ResumeError",
    "RuleJudge",
    "SCCoQ",
    "ScriptedParticipant",
    "SyntheticConfig",
    "UnknownStrategyError",
    "WordNet",
    "WordNetMissingError",
    "ZeroShot",
    "ask_chain",
    "build_synthetic",
    "chain_dialogue",
    "cohen_kappa",
    "gwet_ac1",
    "item_from_dict",
    "judge_agreement",
    "load_published",
    "load_synthetic",
    "make_strategy",
    "mcnemar_exact",
    "paired_bootstrap",
    "render",
    "report",
    "run_punchbench",
    "score",
    "verify_items",
]
