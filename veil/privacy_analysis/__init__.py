"""Privacy analysis: how well could a curious cloud attribute anonymous uploads to people?

Submodules: ``attribution`` (Bayes-optimal attributor by Monte Carlo), ``linkage`` (unsupervised
clustering attack on the pooled stream). Import them directly.
"""

__all__: list[str] = []
