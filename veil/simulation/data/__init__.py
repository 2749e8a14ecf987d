"""Data sets for the ID-free personalisation experiments (IDfree-PL, arXiv:2501.06062).

- :mod:`~veil.simulation.data.types`: :class:`Example`, :class:`Population`, :class:`DatasetFormatError`.
- :mod:`~veil.simulation.data.formats`: loaders for Sentiment140, Amazon reviews and LEAF Reddit.
- :mod:`~veil.simulation.data.synthetic`: deterministic populations on real English text with latent
  user types (gensim's Lee corpus is read only when a population is made).
"""

from veil.simulation.data.formats import load_amazon, load_leaf_reddit, load_sentiment140
from veil.simulation.data.synthetic import PopulationConfig, make_population, topic_of
from veil.simulation.data.types import DatasetFormatError, Example, Population

__all__ = [
    "DatasetFormatError",
    "Example",
    "Population",
    "PopulationConfig",
    "load_amazon",
    "load_leaf_reddit",
    "load_sentiment140",
    "make_population",
    "topic_of",
]
