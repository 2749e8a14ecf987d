"""Privacy analysis: how well could a curious cloud attribute anonymous uploads to people?

Submodules (import them directly):

- ``distances``: total variation, Hellinger and Bhattacharyya between users' distributions.
- ``bounds`` and ``attribution``: the Bayes-optimal attribution accuracy (exact in low dimension, Monte
  Carlo with a Wilson interval, vectorised for large populations), its closed-form upper bounds, and the
  accuracy when T uploads of a user can be linked.
- ``gdp``: the Gaussian-DP view of a pair of users (mu, the (epsilon, delta) curve, the trade-off).
- ``identifiability``: the Gram-matrix test, and the shared-basis family with and without grouping.
- ``attacks`` and ``linkage``: what a curious cloud can actually run on stored uploads.
- ``accounting``: Opacus accountants for DP-SGD on uploads, and composition across runs.
- ``audit``: ``veil audit`` (the population spec, the policy, the sections, the stream audit, the report).
- ``families``: what the maths above needs from each distribution family, one module per family, looked up
  by family name in one registry (``PRIVACY_FAMILIES``).
"""

__all__: list[str] = []
