"""``veil experiment longform --quick --json`` with fields of the quick preset replaced, for presets the
command has no option for (e.g. a base model whose drafts follow the required length).

``--set`` takes JSON: the fields of :class:`~veil.models.longform.experiment.LongformExperimentConfig` to
replace (lists become tuples; an object replaces fields of a dataclass field, e.g.
``{"step_dpo": {"loss_type": "sigmoid_norm", "beta": 2.0}}`` starts from the preset's ``dpo``). The base model is cached in ``VEIL_DATA_DIR`` as the command caches it.
Prints one JSON object on stdout (the command's, with ``config.overrides`` added); progress on stderr.

Usage::

    VEIL_DATA_DIR=/tmp/vd3 .venv/bin/python benchmarks/longform_quick_variant.py \\
        --set '{"draft_words": [0.5, 1.5], "base_epochs": 20}' > OUT.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", default="{}", help="JSON: preset fields to replace")
    args = ap.parse_args()

    from veil.cli.main import _data_dir, _quiet_libraries
    from veil.models.longform.experiment import LongformExperimentConfig, run_longform_experiment

    torch.set_num_threads(1)
    _quiet_libraries()
    over = json.loads(args.set)
    cfg = LongformExperimentConfig.quick().overridden(over)
    result = run_longform_experiment(
        cfg, progress=lambda m: print(m, file=sys.stderr, flush=True), data_dir=_data_dir()
    )
    result["config"]["overrides"] = over
    print(json.dumps(result))


if __name__ == "__main__":
    main()
