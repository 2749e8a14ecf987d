"""``veil audit``: a population's attribution figures, checked against a policy, written as a report.

- ``spec``: the YAML population spec (users' distributions, utility points, the policy mapping).
- ``policy``: the limits and their evaluation into violations.
- ``sections``: one measurement per report section (attribution, TV, Gaussian-DP, identifiability,
  attacks).
- ``run``: :func:`run_audit`, which runs the sections on one population.
- ``stream``: the audit of a pooled upload stream when no distributions are known.
- ``report``: the HTML and JSON report.
"""

from veil.privacy_analysis.audit.run import AuditConfig, AuditResult, run_audit

__all__ = ["AuditConfig", "AuditResult", "run_audit"]
