"""The experiment's report: a self-contained ``report.html`` (plots embedded as PNG) and ``summary.json``."""

from __future__ import annotations

import html
import json
import os
import platform
from pathlib import Path
from typing import Any

from veil.reporting import atomic_write_text, png_base64
from veil.simulation.experiments.personalization import ExperimentResult

__all__ = ["label", "methods_table_rows", "write_report"]

_LABELS = {
    "none": "no personalisation",
    "static": "static embedding",
    "idfree-beta": "IDfree-PL (Beta)",
    "idfree-gaussian": "IDfree-PL (Gaussian)",
    "idfree-basis_mixture": "IDfree-PL (basis mixture)",
    "idfree-gaussian-gradient-return": "IDfree-PL (Gaussian, gradient-return)",
    "idfree-gaussian-gdp": "IDfree-PL (Gaussian, policy-capped residual)",
    "oracle-type": "oracle per-type embedding",
    "codebook": "k-anonymous codebook",
    "codebook-mixing": "codebook + private mixing",
    "on-device-finetune": "on-device fine-tuning",
}


def label(method: str) -> str:
    if method in _LABELS:
        return _LABELS[method]
    if method.startswith("idfree-") and "-service" in method:
        family = method.removeprefix("idfree-").split("-service")[0].replace("_", " ")
        dp = " + DP-SGD" if method.endswith("-dp") else ""
        return f"IDfree-PL ({family}) via OHTTP service{dp}"
    return method


TABLE_HEAD = ("method", "accuracy", "gain retained", "Bayes attribution", "floor", "linkage attack", "chance")


def methods_table_rows(result: ExperimentResult) -> list[list[str]]:
    """Rows of the terminal/HTML table, in the order of :data:`TABLE_HEAD`."""
    rows = []
    for m in result.methods:
        attr = f"{m.attribution_accuracy:.3f}" if m.uploads_embedding else "n/a (no embedding)"
        link = f"{m.linkage_accuracy:.3f}" if m.uploads_embedding else "n/a"
        gain = result.gain_retained(m)
        floor = "" if m.attribution_floor is None else f"{m.attribution_floor:.3f}"
        rows.append(
            [
                label(m.method),
                f"{m.accuracy:.3f}",
                "" if gain is None else f"{gain:.0%}",
                attr,
                floor,
                link,
                f"{m.chance:.3f}",
            ]
        )
    return rows


def _plots(result: ExperimentResult) -> list[tuple[str, str]]:
    # lazy: matplotlib costs ~0.5 s at import; only the HTML report draws
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = [label(m.method) for m in result.methods]
    out = []

    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.barh(names, [m.accuracy for m in result.methods], color="#4c72b0")
    ax.set_xlabel("accuracy on held-out examples")
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_title("Accuracy per method")
    out.append(("Accuracy per method", png_base64(fig)))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3.6))
    uploads = [m for m in result.methods if m.uploads_embedding]
    y = range(len(uploads))
    ax.barh(
        [i - 0.2 for i in y],
        [m.attribution_accuracy for m in uploads],
        height=0.4,
        label="Bayes-optimal attributor",
        color="#c44e52",
    )
    ax.barh(
        [i + 0.2 for i in y],
        [m.linkage_accuracy for m in uploads],
        height=0.4,
        label="clustering linkage attack",
        color="#dd8452",
    )
    ax.axvline(uploads[0].chance if uploads else 0, color="black", ls="--", label="chance (1/users)")
    ax.set_yticks(list(y), [label(m.method) for m in uploads])
    ax.set_xlim(0, 1.02)
    ax.invert_yaxis()
    ax.set_xlabel("share of uploads attributed to the right user")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Attribution of uploaded embeddings")
    out.append(("Attribution accuracy against chance", png_base64(fig)))
    plt.close(fig)

    retained = [(m, result.gain_retained(m)) for m in [*result.methods, *result.frontier]]
    retained = [(m, g) for m, g in retained if g is not None and m.uploads_embedding]
    if retained:
        fig, ax = plt.subplots(figsize=(7, 4.8))
        seen: set[str] = set()
        for m, g in retained:
            name = label(m.method) + ("" if m.spread is None else f" ({m.spread:g})")
            if name in seen:
                continue
            seen.add(name)
            ax.scatter([m.attribution_accuracy], [g], s=40)
            ax.annotate(
                name, (m.attribution_accuracy, g), fontsize=7, textcoords="offset points", xytext=(4, 3)
            )
        floor = next((m.attribution_floor for m, _ in retained if m.attribution_floor is not None), None)
        if floor is not None:
            ax.axvline(floor, color="green", ls="--", label=f"floor 1/(users per type) = {floor:.3f}")
            ax.axvline(2 * floor, color="green", ls=":", label="twice the floor")
        ax.axhline(0.9, color="grey", ls=":", label="90% of the static embedding's gain")
        ax.set_xscale("log")
        ax.set_xlabel("single-upload Bayes attribution (log scale; lower is more private)")
        ax.set_ylabel("gain retained: (acc - none) / (static - none)")
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title("Gain retained against attribution")
        out.append(("Gain retained against attribution, with the floor", png_base64(fig)))
        plt.close(fig)

    if not result.frontier:
        return out
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for family in sorted({m.family for m in result.frontier if m.family}):
        pts = sorted((m for m in result.frontier if m.family == family), key=lambda m: m.attribution_accuracy)
        ax.plot(
            [m.attribution_accuracy for m in pts],
            [m.accuracy for m in pts],
            "o-",
            label=f"IDfree-PL {family}",
        )
        for m in pts:
            ax.annotate(
                f"{m.spread:g}",
                (m.attribution_accuracy, m.accuracy),
                fontsize=7,
                textcoords="offset points",
                xytext=(3, 3),
            )
    for name, marker in (("none", "s"), ("static", "X")):
        if name not in {m.method for m in result.methods}:
            continue
        m = result.method(name)
        ax.plot([m.attribution_accuracy], [m.accuracy], marker, ms=9, label=label(name))
    ax.axvline(1.0 / result.users, color="grey", ls=":", label="chance")
    ax.set_xlabel("Bayes-optimal attribution accuracy (lower is more private)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    ax.set_title("Privacy-utility frontier (labels: spread)")
    out.append(("Privacy-utility frontier", png_base64(fig)))
    plt.close(fig)
    return out


def _extra_tables(extra: dict[str, Any]) -> str:
    """Nested dicts of scalars as key/value tables (one per section)."""
    flat = {k: v for k, v in extra.items() if not isinstance(v, dict)}
    parts = [("Service run", flat)] if flat else []
    parts += [(k, v) for k, v in extra.items() if isinstance(v, dict)]
    out = []
    for title, table in parts:
        rows = "".join(
            f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>"
            for k, v in table.items()
            if not isinstance(v, dict | list)
        )
        out.append(f"<h2>{html.escape(title)}</h2><table>{rows}</table>")
    return "".join(out)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_report(
    result: ExperimentResult, out_dir: Path, extra: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``report.html`` and ``summary.json`` into ``out_dir``; returns their paths.

    ``extra`` (e.g. the service run's figures) is added to the summary and shown as tables.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {**result.to_json(), "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}}
    if extra:
        summary["service"] = extra
    summary_path = out_dir / "summary.json"
    atomic_write_text(summary_path, json.dumps(summary, indent=2))
    head = TABLE_HEAD
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
        for row in methods_table_rows(result)
    )
    plots = "".join(
        f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='data:image/png;base64,{b64}'>"
        for t, b64 in _plots(result)
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Veil: IDfree-PL report</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}</style>
</head><body><h1>ID-free personalisation: {html.escape(result.task)} on {html.escape(result.model)}</h1>
<p>{result.users} users, {result.test_examples} held-out examples, {result.seconds:.0f} s on
{html.escape(platform.machine())} with {os.cpu_count()} CPUs. Attribution is measured on fresh uploads of
each method's embeddings; methods that upload no embedding are at chance by construction.</p>
<table><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr>{rows}</table>{plots}
{_extra_tables(extra or {})}</body></html>"""
    report_path = out_dir / "report.html"
    atomic_write_text(report_path, page)
    return report_path, summary_path
