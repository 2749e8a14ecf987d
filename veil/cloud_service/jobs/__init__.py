"""Training jobs the cloud runs on stored anonymous uploads.

- :mod:`~veil.cloud_service.jobs.personalized`: IDfree-PL stage 3 (arXiv:2501.06062), optionally with
  DP-SGD, ending in a personalised checkpoint and a report.

Import the submodules directly; this package imports nothing at import time (they pull in torch).
"""

__all__: list[str] = []
