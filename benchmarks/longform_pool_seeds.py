"""Step DPO against SFT and outcome DPO prompt by prompt over the training seeds of several runs of
``veil experiment longform --json`` (or ``longform_quick_variant.py``) on one search: the runs' ``per_seed``
entries are joined and paired as the experiment pairs them
(:func:`~veil.models.longform.experiment.paired_length_scores`). A seed given by two files counts once.
Quality and the contradiction rate, which the runs keep per seed only, are compared seed by seed: how
many seeds step DPO is better in, and a two-sided Wilcoxon signed-rank test over the seeds (tied seeds
dropped).

Usage::

    .venv/bin/python benchmarks/longform_pool_seeds.py results/longform_quick_2core.json OTHER.json ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", type=Path, nargs="+")
    args = ap.parse_args()

    from veil.models.longform.experiment import paired_length_scores

    runs: dict[str, dict[int, dict]] = {}
    for path in args.files:
        result = json.loads(path.read_text(encoding="utf-8"))
        for name, seeds in result["per_seed"].items():
            if name == "base":
                continue
            for seed, run in zip(result["config"]["seeds"], seeds, strict=True):
                if "length_scores" not in run:
                    raise SystemExit(
                        f"{path}: {name}, seed {seed} has no per-prompt length_scores (an older run)"
                    )
                runs.setdefault(name, {}).setdefault(seed, run)
    seeds = sorted(set.intersection(*(set(by) for by in runs.values())))
    out = {
        "seeds": seeds,
        "length_score": {n: float(np.mean([runs[n][s]["length_score"] for s in seeds])) for n in runs},
    }
    for other in ("sft", "outcome-dpo"):
        out[f"step-dpo_vs_{other}"] = paired_length_scores(
            [runs["step-dpo"][s] for s in seeds], [runs[other][s] for s in seeds]
        )
    out["step_ahead_of"] = {
        n: sum(runs["step-dpo"][s]["length_score"] > runs[n][s]["length_score"] for s in seeds)
        for n in ("sft", "outcome-dpo")
    }
    for key, sign in (("quality", 1.0), ("contradiction_rate", -1.0)):  # sign: +1 where higher is better
        out[key] = {n: float(np.mean([runs[n][s][key] for s in seeds])) for n in runs}
        for other in ("sft", "outcome-dpo"):
            diff = sign * np.array([runs["step-dpo"][s][key] - runs[other][s][key] for s in seeds])
            out[f"{key}_step-dpo_vs_{other}"] = {
                "step_better_in": int((diff > 0).sum()),
                "step_worse_in": int((diff < 0).sum()),
                "wilcoxon_p": float(wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0,
            }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
