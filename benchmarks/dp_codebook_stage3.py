"""Stage 3 on the k-anonymous codebook's uploads: non-private against DP-SGD at a target epsilon.

Builds the synthetic population (next_word), runs stage 1, learns the codebook non-privately for the
phones' choices (``veil.simulation.codebook.learn_codebook``), lets every phone upload its examples
with its prototype, decodes the uploads, and then, from that same post-choice state (stage-1 weights,
the codebook's prototypes, the decoded uploads), runs stage 3 twice: without privacy and under DP-SGD
(``veil.models.dp_codebook.fit_codebook_stage3``) with sigma chosen by the accountant for
``--target-epsilon`` at ``delta = 1 / N**1.1 <= 1/N`` (N = training uploads). Reports the held-out
accuracy of none (stage 1), non-private and DP, the gain retained ``(dp - none) / (nonprivate - none)``
(target >= 0.9) and the privacy figures: epsilon, delta, accountant, sigma, sampling rate, steps, per
upload and per user.

    .venv/bin/python benchmarks/dp_codebook_stage3.py --quick --users 100 --types 4    # tiny model, CPU
    python benchmarks/dp_codebook_stage3.py --users 1000 --types 10 --out results/x.jsonl  # SmolLM2, GPU

``--quick`` is the random-init 2-layer ``tiny-llama`` with the quick experiment's settings; without it,
SmolLM2-135M-Instruct with the full experiment's. Stage 3 trains frozen-embedding full fine-tuning
(``--mode frozen-embeddings``, the quick default) or LoRA (``--mode lora``, the SmolLM2 default) in
both runs alike.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["PHASES", "PostChoice", "main", "prepare", "run", "stage3", "stage3_configs"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny random-init model (CPU); default SmolLM2")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--types", type=int, default=10)
    p.add_argument("--train-per-user", type=int, help="default: the preset's")
    p.add_argument("--test-per-user", type=int, help="default: the preset's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="torch device (auto: CUDA when available)")
    g = p.add_argument_group("codebook (the harness's, non-private, for the phones' choices)")
    g.add_argument(
        "--codebook-rounds", type=int, help="choice / stage-3 alternations (default: the preset's)"
    )
    g.add_argument(
        "--codebook-epochs", type=int, help="stage-3 epochs spread over the rounds (default: the preset's)"
    )
    g = p.add_argument_group("stage 3 (both runs)")
    g.add_argument(
        "--mode", choices=["lora", "frozen-embeddings"], help="default: lora, --quick frozen-embeddings"
    )
    g.add_argument("--lora-r", type=int, default=16)
    g.add_argument("--epochs", type=int, default=3)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--lr", type=float, help="default: 3e-3 quick, 1e-3 LoRA on SmolLM2")
    g.add_argument("--fixed-prototypes", action="store_true", help="train the model only, not the prototypes")
    g = p.add_argument_group("DP-SGD")
    g.add_argument("--target-epsilon", type=float, default=8.0)
    g.add_argument("--accountant", choices=["prv", "rdp"], default="prv")
    g.add_argument("--max-grad-norm", type=float, default=1.0)
    g.add_argument("--dp-epochs", type=int, help="default: 4 x --epochs (DP-SGD needs more, noisier steps)")
    g.add_argument("--dp-batch-size", type=int, default=256, help="expected Poisson batch size")
    g.add_argument("--dp-lr", type=float, help="default: 1e-2 quick, 3e-3 SmolLM2")
    p.add_argument(
        "--state",
        type=Path,
        help="keep each finished phase here; a rerun with the same arguments resumes after the last one",
    )
    p.add_argument(
        "--phases",
        nargs="+",
        choices=PHASES,
        default=list(PHASES),
        help="phases this invocation may run (with --state, to split a long run over several commands)",
    )
    p.add_argument("--out", type=Path, help="append the result as one JSON line to this file")
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    return p


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


PHASES = ("stage1", "codebook", "nonprivate", "dp")


@dataclasses.dataclass
class PostChoice:
    """The state both stage-3 runs start from: stage-1 model, codebook, decoded uploads."""

    exp: Any  # the experiment harness's ExperimentRun: population, tokenised data, model
    stage1_model: Any
    book: Any  # the final Codebook the phones chose against
    index: Any  # (len(data),) prototype index of every upload (and test request)
    none_acc: float
    codebook_acc: float
    seconds: dict[str, float]


class _PhaseNotAllowedError(Exception):
    """The next phase is not among ``--phases``: the work so far is kept under ``--state``."""


class _Phases:
    """Which phases this invocation may run, and the finished ones kept under ``--state``."""

    def __init__(self, state: Path | None, allowed: list[str], key: dict[str, Any]) -> None:
        self.state, self.allowed = state, allowed
        if state is None:
            return
        state.mkdir(parents=True, exist_ok=True)
        stored = state / "arguments.json"  # a state is only resumed with the arguments that made it
        if stored.is_file() and json.loads(stored.read_text()) != key:
            raise SystemExit(
                f"{state} holds a run with other arguments ({stored.read_text()}); use another --state"
            )
        stored.write_text(json.dumps(key))

    def path(self, name: str, ext: str) -> Path | None:
        return None if self.state is None else self.state / f"{name}.{ext}"

    def load(self, name: str, ext: str = "pt", settings: str | None = None) -> Any:
        """The kept result of phase ``name`` (``None`` to run it); a result made with other
        ``settings`` is run again."""
        import torch

        path = self.path(name, ext)
        stale = path is not None and path.is_file() and ext == "json" and settings is not None
        if stale and json.loads(path.read_text()).get("settings") != settings:  # type: ignore[union-attr]
            path = None
        if path is None or not path.is_file():
            if name not in self.allowed:
                raise _PhaseNotAllowedError(name)
            return None
        _log(f"{name}: loaded from {path}")
        if ext == "json":
            return json.loads(path.read_text())
        return torch.load(path, map_location="cpu", weights_only=False)

    def save(self, name: str, obj: Any, ext: str = "pt") -> None:
        import torch

        path = self.path(name, ext)
        if path is None:
            return
        tmp = path.with_suffix(".tmp")
        if ext == "json":
            tmp.write_text(json.dumps(obj))
        else:
            torch.save(obj, tmp)
        tmp.replace(path)  # a phase killed half-way leaves nothing behind


def prepare(args: argparse.Namespace, phases: _Phases) -> PostChoice:
    """Population, stage 1, the harness's codebook (non-private) and the phones' decoded uploads."""
    import numpy as np

    from veil.client_sdk.distributions import Codebook
    from veil.models.training import evaluate
    from veil.progress import NullProgress
    from veil.simulation.experiments.personalization import ExperimentConfig
    from veil.simulation.experiments.runner import ExperimentRun

    preset = ExperimentConfig.quick if args.quick else ExperimentConfig.full
    cfg = preset("next_word", args.seed, users=args.users, types=args.types)
    pop = dataclasses.replace(
        cfg.population,
        train_per_user=args.train_per_user or cfg.population.train_per_user,
        test_per_user=args.test_per_user or cfg.population.test_per_user,
    )
    book_cfg = dataclasses.replace(cfg.codebook, rounds=args.codebook_rounds or cfg.codebook.rounds)
    s3 = dataclasses.replace(cfg.stage3, epochs=args.codebook_epochs or cfg.stage3.epochs)  # codebook only
    cfg = dataclasses.replace(cfg, population=pop, codebook=book_cfg, stage3=s3, device=args.device)

    t = time.perf_counter()
    exp = ExperimentRun(cfg, NullProgress())
    _log(
        f"population: {args.users} users, {args.types} types, {exp.train_idx.size} uploads; {exp.model.device}"
    )
    saved = phases.load("stage1")
    if saved is None:
        exp.stage1()
        none_acc = float(evaluate(exp.model, exp.data, exp.test_idx).mean())
        seconds = {"stage1": time.perf_counter() - t}
        phases.save("stage1", {"model": exp.stage1_state, "none_acc": none_acc, "seconds": seconds})
    else:
        exp.stage1_state = saved["model"]
        exp.reset()
        none_acc, seconds = saved["none_acc"], saved["seconds"]
    _log(f"stage 1: none accuracy {none_acc:.4f} ({seconds['stage1']:.0f} s)")

    t = time.perf_counter()
    saved = phases.load("codebook")
    if saved is None:
        learned = exp.codebook()  # trains exp.model from the stage-1 weights, non-privately
        book = learned.codebook
        # Every phone uploads each of its examples with its prototype (+ noise); the cloud decodes them.
        upload_rng = np.random.default_rng(args.seed + 7)
        sent = np.stack(
            [learned.distributions[exp.owner[i]].sample(upload_rng) for i in range(len(exp.data))]
        )
        index = book.decode(sent)  # (len(data),): test rows too, the prototype the phone sends with a request
        codebook_acc = float(
            evaluate(exp.model, exp.data, exp.test_idx, lambda idx: book.prototypes[index[idx]]).mean()
        )
        exp.reset()  # back to the stage-1 weights: both stage-3 runs start here
        seconds["codebook"] = time.perf_counter() - t
        phases.save(
            "codebook", {**book.arrays(), "index": index, "accuracy": codebook_acc, "seconds": seconds}
        )
    else:
        book = Codebook.from_arrays(saved)
        index, codebook_acc, seconds = saved["index"], saved["accuracy"], saved["seconds"]
    counts = np.bincount(index[exp.train_idx], minlength=book.size)
    _log(
        f"codebook: {int(book.active.sum())} usable of {book.size}, k_min {book.k_min}, smallest group "
        f"{int(counts[counts > 0].min())} uploads; its own model {codebook_acc:.4f} ({seconds['codebook']:.0f} s)"
    )
    return PostChoice(exp, exp.model, book, index, none_acc, codebook_acc, dict(seconds))


def stage3_configs(args: argparse.Namespace) -> tuple[Any, Any]:
    """The non-private and the DP stage-3 settings (same parameterisation, DP's own batch/lr/epochs)."""
    from veil.models.dp_codebook import CodebookStage3Config
    from veil.models.dp_training import DPConfig
    from veil.models.training import LoraSettings

    mode = args.mode or ("frozen-embeddings" if args.quick else "lora")
    lr = args.lr or (3e-3 if args.quick else 1e-3)
    plain = CodebookStage3Config(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=lr,
        seed=args.seed,
        lora=LoraSettings(r=args.lora_r, alpha=2 * args.lora_r) if mode == "lora" else None,
        freeze_embeddings=mode == "frozen-embeddings",
        train_prototypes=not args.fixed_prototypes,
    )
    dp = DPConfig(
        target_epsilon=args.target_epsilon, accountant=args.accountant, max_grad_norm=args.max_grad_norm
    )
    private = dataclasses.replace(
        plain,
        epochs=args.dp_epochs or 4 * args.epochs,
        batch_size=args.dp_batch_size,
        lr=args.dp_lr or (1e-2 if args.quick else 3e-3),
        dp=dp,
    )
    return plain, private


def stage3(state: PostChoice, s3: Any, seed: int) -> tuple[float, Any, float]:
    """Stage 3 from the post-choice state: (test accuracy, CodebookStage3Result, seconds)."""
    import torch

    from veil.models.dp_codebook import fit_codebook_stage3
    from veil.models.training import evaluate

    t = time.perf_counter()
    torch.manual_seed(seed)
    exp, index = state.exp, state.index
    model = copy.deepcopy(state.stage1_model)  # LoRA is injected into this copy only
    r = fit_codebook_stage3(model, exp.data, exp.train_idx, index, state.book.prototypes, s3)
    acc = float(evaluate(model, exp.data, exp.test_idx, lambda idx: r.prototypes[index[idx]]).mean())
    return acc, r, time.perf_counter() - t


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the JSON object it prints. Raises ``_PhaseNotAllowedError`` at a phase not allowed."""
    t_all = time.perf_counter()
    # What stage 1 and the codebook depend on; each stage-3 result keeps its own settings beside it.
    shared = ("quick", "users", "types", "train_per_user", "test_per_user", "seed", "device")
    key = {k: getattr(args, k) for k in (*shared, "codebook_rounds", "codebook_epochs")}
    phases = _Phases(args.state, args.phases, key)
    state = prepare(args, phases)
    exp = state.exp
    per_user = exp.cfg.population.train_per_user
    plain, private = stage3_configs(args)
    done: dict[str, Any] = {}
    for name, s3 in (("nonprivate", plain), ("dp", private)):
        settings = repr(s3)
        saved = phases.load(name, "json", settings)
        if saved is None:
            acc, r, sec = stage3(state, s3, args.seed)
            saved = {"accuracy": acc, "steps": r.train.steps, "privacy": r.privacy(per_user), "seconds": sec}
            saved["settings"] = settings
            phases.save(name, saved, "json")
        done[name] = saved
        _log(
            f"stage 3 {name}: accuracy {saved['accuracy']:.4f}, {saved['steps']} steps ({saved['seconds']:.0f} s)"
        )
    acc = {k: v["accuracy"] for k, v in done.items()}
    gain = acc["nonprivate"] - state.none_acc
    seconds = {**state.seconds, **{k: v["seconds"] for k, v in done.items()}}
    return {
        "benchmark": "dp_codebook_stage3",
        "model": exp.cfg.model,
        "device": str(exp.model.device),
        "users": args.users,
        "types": args.types,
        "uploads": int(exp.train_idx.size),
        "uploads_per_user": per_user,
        "test_examples": int(exp.test_idx.size),
        "codebook": {
            "size": state.book.size,
            "usable": int(state.book.active.sum()),
            "k_min": state.book.k_min,
        },
        "accuracy": {"none": state.none_acc, **acc, "codebook_learner": state.codebook_acc},
        "gain_retained": (acc["dp"] - state.none_acc) / gain if gain > 0 else None,
        "target": {
            "epsilon": args.target_epsilon,
            "delta_at_most": 1.0 / exp.train_idx.size,
            "gain_retained": 0.9,
        },
        "privacy": done["dp"]["privacy"],
        "stage3": {
            "mode": "lora" if plain.lora is not None else "frozen-embeddings",
            "train_prototypes": plain.train_prototypes,
            "nonprivate": {"epochs": plain.epochs, "batch_size": plain.batch_size, "lr": plain.lr},
            "dp": {"epochs": private.epochs, "expected_batch_size": private.batch_size, "lr": private.lr},
        },
        "steps": {k: v["steps"] for k, v in done.items()},
        "seconds": {
            k: round(v, 1) for k, v in {**seconds, "this_invocation": time.perf_counter() - t_all}.items()
        },
        "seed": args.seed,
    }


def _table(res: dict[str, Any]) -> None:
    a, p = res["accuracy"], res["privacy"]
    print(
        f"stage 3 on codebook uploads: {res['model']} on {res['device']}, {res['users']} users, "
        f"{res['uploads']} uploads ({res['uploads_per_user']} per user), {res['test_examples']} test examples"
    )
    print(f"{'run':<12}{'accuracy':>10}{'gain':>9}")
    for name in ("none", "nonprivate", "dp"):
        print(f"{name:<12}{a[name]:>10.4f}{a[name] - a['none']:>+9.4f}")
    kept = res["gain_retained"]
    ok = kept is not None and kept >= 0.9 and p["epsilon"] <= res["target"]["epsilon"] + 1e-6
    print(
        f"gain retained: {'n/a' if kept is None else f'{kept:.3f}'} (target >= 0.9): {'PASS' if ok else 'FAIL'}"
    )
    print(
        f"privacy: epsilon {p['epsilon']:.3f} at delta {p['delta']:.3g} (<= 1/N = {res['target']['delta_at_most']:.3g}), "
        f"{p['accountant']} accountant, sigma {p['noise_multiplier']:.3f}, Poisson q {p['sample_rate']:.4g}, "
        f"{p['steps']} steps, clip {p['max_grad_norm']}; unit: {p['unit_of_privacy']}"
    )
    u = p["user_level"]
    print(
        f"per user ({u['uploads_per_user']} uploads): epsilon {u['epsilon']:.4g} at delta {u['delta']:.3g} ({u['accountant']})"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    from veil.models.loading import quiet_transformers

    quiet_transformers()
    try:
        res = run(args)
    except _PhaseNotAllowedError as stop:
        _log(f"stopped before phase {stop}: rerun with the same --state and --phases {stop} ... to go on")
        return 0
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(res) + "\n")
    print(json.dumps(res))
    if not args.json:
        _table(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
