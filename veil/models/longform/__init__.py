"""Long-form generation that stays on length: LongDPO (Ping et al., arXiv:2502.02095).

* :mod:`~veil.models.longform.length`: LongBench-Write's length score S_l and word count.
* :mod:`~veil.models.longform.data`: "Write about T in about L words" tasks over the shipped corpus;
  LongBench-Write's ``{prompt, type, length}`` records.
* :mod:`~veil.models.longform.facts`, :mod:`~veil.models.longform.judge`: facts and contradictions; the
  seven-principle judge (rule-based, or an LM with soft 1-5 weights).
* :mod:`~veil.models.longform.policy`, :mod:`~veil.models.longform.search`: sampled steps, the greedy
  (as released) or MCTS step search, the preference pairs;
  :mod:`~veil.models.longform.memory` (the fact pool's veto), :mod:`~veil.models.longform.critique`.
* :mod:`~veil.models.longform.train`: step-level DPO, SFT on chosen paths, outcome DPO.
* :mod:`~veil.models.longform.experiment`: the comparison behind ``veil experiment longform``.

Submodules are imported where used (torch and transformers cost seconds at import).
"""

__all__: list[str] = []
