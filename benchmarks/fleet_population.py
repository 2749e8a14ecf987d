"""How a realistic population changes a fleet round: dropouts, late joiners, skewed data, slow links.

Each condition is one ``veil simulate --rounds 2`` of the same fleet (same seed), with one setting
changed from the baseline; the table gives, per round, the phones that took part (and dropped), the
accuracy, the exact single-upload attribution and the round's wall time, each against the baseline of
the same run.

    .venv/bin/python benchmarks/fleet_population.py --phones 100
"""

from __future__ import annotations

import argparse

from fleet_runs import emit, simulate_two_rounds

CONDITIONS = {
    "baseline": [],
    "dropout 0.2": ["--dropout", "0.2"],
    "late join 0.3": ["--late-join", "0.3"],
    "skew 1.0": ["--skew", "1.0"],
    "latency 50 ms": ["--latency-ms", "50"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phones", type=int, default=100)
    parser.add_argument("--out", help="append each condition's rows here (JSON lines)")
    args = parser.parse_args()
    base: dict | None = None
    for name, extra in CONDITIONS.items():
        report = simulate_two_rounds(args.phones, extra)
        rows = [
            {
                k: r[k]
                for k in ("round", "phones", "dropped", "not_joined", "accuracy", "attribution", "seconds")
            }
            for r in report["rounds"]
        ]
        base = base or {"rows": rows}
        for row, ref in zip(rows, base["rows"], strict=True):
            row["accuracy_vs_baseline"] = round(row["accuracy"] - ref["accuracy"], 4)
            row["seconds_vs_baseline"] = round(row["seconds"] / ref["seconds"], 2)
        line = {"condition": name, "phones": args.phones, "rounds": rows}
        emit(line, args.out, machine=False)


if __name__ == "__main__":
    main()
