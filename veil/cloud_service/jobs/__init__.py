"""Training jobs the cloud runs on stored anonymous uploads.

- :mod:`~veil.cloud_service.jobs.personalized`: IDfree-PL stage 3 (arXiv:2501.06062), optionally with
  DP-SGD, ending in a personalised checkpoint and a report.
- :mod:`~veil.cloud_service.jobs.codebook`: the same stage 3 on codebook uploads, training the prototype
  vectors with the model (the job's ``codebook`` option).

Import the submodules directly; this package imports nothing at import time (they pull in torch).
"""

__all__: list[str] = []
