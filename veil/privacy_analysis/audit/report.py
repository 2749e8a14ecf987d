"""The audit's report: a self-contained ``report.html`` (plots embedded as PNG) and ``audit.json``.

Plots: attribution accuracy against the number T of linked uploads (with 95% intervals, chance and the
closed-form bound), the practical attacks against the Bayes ceiling, the privacy-utility frontier when the
spec gives ``utility:`` points, and the pairwise TV heatmap for populations of at most 50 users.
The report reads the JSON summary (:meth:`AuditResult.to_json`, or the stream-only summary of
``veil audit --db``), so it can be rebuilt from ``audit.json`` alone (without the heatmap).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from veil.reporting import atomic_write_text, png_base64

__all__ = ["summary_rows", "write_audit_report"]


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """``(quantity, value)`` rows shared by the terminal table and the HTML report."""
    rows: list[tuple[str, str]] = [
        ("users", _fmt(summary.get("users"))),
        ("chance (1/K)", _fmt(summary.get("chance"))),
    ]
    if summary.get("bayes_attribution_accuracy") is not None:
        lo, hi = summary["bayes_ci"]
        method = summary.get("bayes", {}).get("method", "monte_carlo")
        rows.append(
            (
                "Bayes attribution (1 upload)",
                f"{summary['bayes_attribution_accuracy']:.4f} [{lo:.4f}, {hi:.4f}] ({method})",
            )
        )
        rows.append(("closed-form upper bound", _fmt(summary.get("upper_bound"))))
    for t, v in (summary.get("linked") or {}).items():
        if t != "1":
            rows.append(
                (
                    f"Bayes attribution, T={t} linked",
                    f"{v['accuracy']:.4f} [{v['ci_low']:.4f}, {v['ci_high']:.4f}]",
                )
            )
    tv = summary.get("pairwise_tv") or {}
    if tv:
        note = f" (sample of {tv['n_users']} users)" if tv.get("sampled") else ""
        rows.append(("pairwise TV max / mean" + note, f"{tv['max']:.4f} / {tv['mean']:.4f}"))
    if summary.get("tv_to_prior"):
        rows.append(("TV bound to the prior, max", _fmt(summary["tv_to_prior"]["max"])))
    gdp = summary.get("gdp")
    if gdp and not gdp.get("finite", True):
        rows.append(
            ("Gaussian-DP mu", f"none finite (stds differ); pooled separation {gdp['mu_pooled_max']:.4g}")
        )
    elif gdp:
        eps = gdp["epsilon"].get("1")
        rows.append(
            (
                "Gaussian-DP mu (largest pair)",
                f"{gdp['mu_max']:.4g} (epsilon {_fmt(eps)} at delta {gdp['delta']:g})",
            )
        )
    ident = summary.get("identifiability")
    if ident:
        verdict = "identifiable" if ident["identifiable"] else "NOT identifiable"
        rows.append(("pooled stream", f"{verdict} (Gram rank {ident['rank']}/{ident['n']})"))
    for attack in summary.get("attacks") or []:
        lo, hi = attack["ci"]
        rows.append(
            (
                f"attack: {attack['name']}",
                f"{attack['accuracy']:.4f} [{lo:.4f}, {hi:.4f}] (chance {attack['chance']:.3g})",
            )
        )
    stream = summary.get("stream")
    if stream:
        rows.append(("stored uploads (embedding)", _fmt(stream.get("n_uploads"))))
        if "duplicate_fraction" in stream:
            rows.append(("exact repeated embeddings", f"{stream['duplicate_fraction']:.2%}"))
            rows.append(("best cluster silhouette", _fmt(stream["clusters"].get("best_silhouette"))))
        if "expected_bayes_accuracy" in stream:
            rows.append(
                ("expected Bayes accuracy on stored uploads", _fmt(stream["expected_bayes_accuracy"]))
            )
    policy = summary.get("policy") or {}
    rows.append(("policy", "ok" if policy.get("ok", True) else f"VIOLATED ({len(policy['violations'])})"))
    return rows


def _plots(summary: dict[str, Any], matrix: np.ndarray | None) -> list[tuple[str, str]]:
    # lazy: matplotlib costs ~0.5 s at import; only the HTML report draws
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out = []
    linked = summary.get("linked") or {}
    if linked:
        ts = sorted(int(t) for t in linked)
        acc = np.array([linked[str(t)]["accuracy"] for t in ts])
        lo = np.array([linked[str(t)]["ci_low"] for t in ts])
        hi = np.array([linked[str(t)]["ci_high"] for t in ts])
        fig, ax = plt.subplots(figsize=(6.5, 4))
        ax.errorbar(ts, acc, yerr=[acc - lo, hi - acc], fmt="o-", capsize=3, label="Bayes-optimal attributor")
        ax.axhline(summary["chance"], color="black", ls="--", label="chance (1/K)")
        if summary.get("upper_bound") is not None:
            ax.axhline(summary["upper_bound"], color="#c44e52", ls=":", label="closed-form bound (T=1)")
        limit = (summary.get("policy") or {}).get("limits", {}).get("max_linked_attribution")
        if limit is not None:
            ax.axhline(limit, color="#dd8452", ls="-.", label="policy limit")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ts, [str(t) for t in ts])
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("T: uploads of one user the attacker can link")
        ax.set_ylabel("attribution accuracy")
        ax.legend(fontsize=8)
        ax.set_title("Attribution accuracy against linked uploads")
        out.append(("Attribution accuracy against linked uploads", png_base64(fig)))
        plt.close(fig)
    attacks = summary.get("attacks") or []
    if attacks:
        fig, ax = plt.subplots(figsize=(7, 0.5 * len(attacks) + 1.6))
        names = [a["name"] for a in attacks]
        acc = np.array([a["accuracy"] for a in attacks])
        err = np.array([[a["accuracy"] - a["ci"][0], a["ci"][1] - a["accuracy"]] for a in attacks]).T
        ax.barh(names, acc, xerr=err, color="#4c72b0", capsize=3)
        ax.axvline(attacks[0]["chance"], color="black", ls="--", label="chance")
        ax.set_xlim(0, 1.02)
        ax.invert_yaxis()
        ax.set_xlabel(f"accuracy on {summary.get('attacks_context', {}).get('users', '?')} users")
        ax.legend(fontsize=8)
        ax.set_title("Practical attacks (Bayes-known-parameters is the ceiling)")
        out.append(("Practical attacks", png_base64(fig)))
        plt.close(fig)
    utility = summary.get("utility") or []
    if utility:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        pts = sorted(utility, key=lambda u: u["attribution"])
        ax.plot(
            [u["attribution"] for u in pts],
            [u["accuracy"] for u in pts],
            "o-",
            label="measured configurations",
        )
        for u in pts:
            ax.annotate(
                u["label"],
                (u["attribution"], u["accuracy"]),
                fontsize=7,
                textcoords="offset points",
                xytext=(3, 3),
            )
        if summary.get("bayes_attribution_accuracy") is not None:
            ax.axvline(
                summary["bayes_attribution_accuracy"], color="#c44e52", ls=":", label="this population"
            )
        if summary.get("chance") is not None:
            ax.axvline(summary["chance"], color="grey", ls="--", label="chance")
        limit = (summary.get("policy") or {}).get("limits", {}).get("max_bayes_attribution")
        if limit is not None:
            ax.axvspan(limit, 1.0, color="#dd8452", alpha=0.15, label="outside the policy")
        ax.set_xlabel("Bayes attribution accuracy (lower is more private)")
        ax.set_ylabel("task accuracy (utility)")
        ax.legend(fontsize=8)
        ax.set_title("Privacy-utility frontier")
        out.append(("Privacy-utility frontier", png_base64(fig)))
        plt.close(fig)
    if matrix is not None and matrix.shape[0] <= 50:
        fig, ax = plt.subplots(figsize=(6, 5))
        im = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
        fig.colorbar(im, ax=ax, label="total variation")
        ax.set_xlabel("user")
        ax.set_ylabel("user")
        ax.set_title("Pairwise total variation")
        out.append(("Pairwise total variation", png_base64(fig)))
        plt.close(fig)
    return out


def write_audit_report(
    summary: dict[str, Any], out_dir: Path, pairwise_matrix: np.ndarray | None = None
) -> tuple[Path, Path]:
    """Write ``report.html`` and ``audit.json`` into ``out_dir`` (created); returns their paths.

    Parameters
    ----------
    summary : dict
        The audit's JSON summary (``AuditResult.to_json()`` or the stream-only summary).
    out_dir : Path
    pairwise_matrix : ndarray ``(K, K)``, optional
        The TV matrix for the heatmap (``AuditResult.pairwise_matrix``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "audit.json"
    atomic_write_text(json_path, json.dumps(summary, indent=2))
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in summary_rows(summary)
    )
    policy = summary.get("policy") or {}
    violations = policy.get("violations") or []
    verdict = (
        "<p class='ok'>Policy: every configured limit holds.</p>"
        if not violations
        else "<p class='bad'>Policy violated:</p><ul>"
        + "".join(f"<li>{html.escape(v['message'])}</li>" for v in violations)
        + "</ul>"
    )
    findings = (summary.get("stream") or {}).get("findings") or []
    notes = "".join(f"<li>{html.escape(f)}</li>" for f in findings)
    plots = "".join(
        f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='data:image/png;base64,{b64}'>"
        for t, b64 in _plots(summary, pairwise_matrix)
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Veil: privacy audit</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}
.ok{{color:#2a7a2a;font-weight:bold}}.bad{{color:#b00;font-weight:bold}}</style></head><body>
<h1>Privacy audit: how well could the cloud attribute an upload to a person?</h1>
<p>Family {html.escape(str(summary.get("family", "n/a")))}, {_fmt(summary.get("users"))} users. Attribution
figures are the Bayes-optimal attacker's, who knows every user's distribution: no attack does better.
Intervals are 95% (Wilson).</p>{verdict}
<table><tr><th>quantity</th><th>value</th></tr>{rows}</table>
{"<h2>Stored stream</h2><ul>" + notes + "</ul>" if notes else ""}{plots}</body></html>"""
    report_path = out_dir / "report.html"
    atomic_write_text(report_path, page)
    return report_path, json_path
