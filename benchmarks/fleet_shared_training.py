"""The fleet's shared parts trained three ways between two rounds, on the same fleet and uploads.

``central`` (stage 3: the model and the prototypes on the stored uploads), ``prototypes`` (the same, the
model frozen: the baseline of the federated target), ``federated`` (the prototypes by FedAvg over Flower,
each phone one step on its own row per FedAvg round) without and with central DP. Each is a separate
``veil simulate --rounds 2`` from the same seed, so round 1 (choice, uploads, evaluation) is the same
fleet; round 2's accuracy is what the training bought. The target: federated within 2 points of
``prototypes``, at the (epsilon, delta) the DP run reports.

    .venv/bin/python benchmarks/fleet_shared_training.py --phones 100
"""

from __future__ import annotations

import argparse
import json

from fleet_runs import simulate_two_rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phones", type=int, default=100)
    parser.add_argument("--fed-rounds", type=int, default=5)
    parser.add_argument("--fed-noise", type=float, default=1.0)
    parser.add_argument("--fed-clip", type=float, default=1.0)
    args = parser.parse_args()
    fed = ["--shared-training", "federated", "--fed-rounds", str(args.fed_rounds)]
    modes = {
        "central (model + prototypes)": ["--shared-training", "central"],
        "prototypes, central": ["--shared-training", "prototypes"],
        "prototypes, federated": fed,
        "prototypes, federated + DP": [
            *fed,
            "--fed-noise",
            str(args.fed_noise),
            "--fed-clip",
            str(args.fed_clip),
        ],
    }
    rows = {}
    for name, extra in modes.items():
        report = simulate_two_rounds(args.phones, extra)
        first, second = report["rounds"]
        rows[name] = {
            "round1_accuracy": first["accuracy"],
            "round2_accuracy": second["accuracy"],
            "gain": round(second["accuracy"] - first["accuracy"], 4),
            "attribution": second["attribution"],
            "training_s": report["stage3_seconds"][0],
            "privacy": first.get("federated", {}).get("privacy"),
        }
        print(json.dumps({"mode": name, **rows[name]}), flush=True)
    base = rows["prototypes, central"]["round2_accuracy"]
    for name in ("prototypes, federated", "prototypes, federated + DP"):
        gap = rows[name]["round2_accuracy"] - base
        print(f"{name}: {gap:+.3f} against the same parts trained centrally (target: within 0.02)")


if __name__ == "__main__":
    main()
